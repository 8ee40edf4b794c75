"""Every use of faust-streaming's (and its aiokafka's) private internals, in one place.

The worker needs a few things Faust does not offer publicly: a consumer that does not invent offset
gaps, the committed offset Faust sought to, a seek on the consumer's own thread, an ack that does not
keep Faust's event alive, produce batches (a Faust ``Topic.send`` costs ~40 µs per record; an
aiokafka batch append a few), and a broker connection that reports a write to a closed socket as a
broken connection under uvloop. Each is a function here, and ``check_versions`` refuses to run on a
version these were not proven with (tests/kafka and tests/faults prove them): a Faust upgrade fails
loudly at start-up instead of losing offsets quietly.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Coroutine
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)

# package -> the release series the internals below were proven with (pyproject.toml pins the same)
PROVEN = {"faust-streaming": "0.15.", "aiokafka": "0.14."}


class UnprovenVersion(RuntimeError):
    """An installed faust-streaming or aiokafka that the worker was not proven with."""


def check_versions() -> None:
    """Fail loudly on a faust-streaming or aiokafka release series the internals were not proven with."""
    for package, series in PROVEN.items():
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError as e:
            raise UnprovenVersion(f"{package} is not installed") from e
        if not version.startswith(series):
            raise UnprovenVersion(
                f"{package} {version} is installed, but rstscope's worker uses its internals as proven with "
                f"{series}x only (rstscope/streams/faust_internals.py); install {package}=={series}* ")


def gapless_app_class() -> type[faust.App]:
    """A `faust.App` whose consumer does not fill offset gaps: the agents' input topics are neither
    compacted nor transactional, so a jump in offsets is a transport artefact, never a real gap, and
    Faust's ``_add_gap`` would count the skipped offsets as acked (streams/offsets.py)."""
    import faust
    from faust.transport.drivers import aiokafka as driver

    class GaplessConsumer(driver.Consumer):
        async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
            log.debug("rstscope: offsets %d..%d of %s skipped by the transport (not treated as acked)",
                      offset_from, offset_to, tp)

    class GaplessTransport(driver.Transport):
        Consumer = GaplessConsumer

    class GaplessApp(faust.App):
        def _new_transport(self) -> Any:
            return GaplessTransport(self.conf.broker_consumer, self)

    return GaplessApp


def mend_closed_transport_writes() -> None:
    """Make aiokafka treat a write to a transport uvloop has already closed as a broken connection.

    When a broker dies, uvloop may close a connection's transport before aiokafka's reader notices;
    the next request's write then raises ``RuntimeError`` ("the handler is closed") where asyncio's
    loop raises nothing and aiokafka catches only ``OSError`` (aio-libs/aiokafka#1038, open). In the
    fetcher that RuntimeError crashed Faust's consumer and the worker exited; as the
    ``KafkaConnectionError`` an ``OSError`` becomes, the fetcher logs it, backs off and fetches again
    from the partition's new leader. Idempotent; only a closed transport's RuntimeError is turned."""
    from aiokafka import conn as aioconn
    from aiokafka import errors

    cls = aioconn.AIOKafkaConnection
    if getattr(cls, "_rstscope_mended", False):
        return

    def mended(write_request: Any) -> Any:
        def send(self: Any, *args: Any, **kwargs: Any) -> Any:
            writer = self._writer
            try:
                return write_request(self, *args, **kwargs)
            except RuntimeError as err:  # aiokafka's own errors are RuntimeErrors too: they pass as they are
                if isinstance(err, errors.KafkaError) or writer is None or not writer.transport.is_closing():
                    raise
                self.close(reason=aioconn.CloseReason.CONNECTION_BROKEN, exc=err)
                raise errors.KafkaConnectionError(
                    f"Connection at {self._host}:{self._port} broken: {err}") from err
        return send

    cls.send = mended(cls.send)
    cls._send_sasl_token = mended(cls._send_sasl_token)
    cls._rstscope_mended = True


def committed_offset(consumer: Any, tp: Any) -> int | None:
    """The committed offset Faust sought a newly assigned partition to (None: the group never committed)."""
    committed = consumer._committed_offset.get(tp)
    return int(committed) if committed is not None else None


async def seek(consumer: Any, tp: Any, offset: int) -> None:
    """Move the fetch position on the consumer's own thread, and Faust's read offset.

    Faust's own `seek` calls aiokafka from the agent's thread while the fetcher runs on the consumer's
    thread: under load that crashed the fetcher (KeyError in `fetched_records`). Enqueue it there
    instead (not awaited: a call into that thread from an agent was seen to stall)."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        await consumer.seek(tp, offset)
        return
    await thread.cast_thread(thread.seek, tp, offset)
    consumer._read_offset[tp] = offset if offset else None  # what Faust's `seek` sets besides


class AckRef:
    """What a held message needs for its ack, instead of Faust's event and message (an event with its
    message costs ~840 bytes, and a worker holds a window's worth of messages). `Consumer.ack` reads
    these fields and keeps a weak reference to what it acks."""

    __slots__ = ("__weakref__", "acked", "generation_id", "offset", "topic", "tp")

    def __init__(self, tp: Any, offset: int, topic: str, generation_id: int) -> None:
        self.tp = tp
        self.offset = offset
        self.topic = topic
        self.generation_id = generation_id
        self.acked = False

    @classmethod
    def of(cls, msg: Any) -> AckRef:
        return cls(msg.tp, msg.offset, msg.topic, msg.generation_id)


def ack(app: Any, refs: list[AckRef]) -> int:
    """Ack messages of the current consumer generation (older ones belong to a past assignment: their
    partitions' new owner replays them). Returns how many were acked."""
    gen = app.consumer_generation_id
    consumer = app.consumer
    n = 0
    for ref in refs:
        if ref.generation_id == gen:
            consumer.ack(ref)
            n += 1
    return n


_WORDS = struct.Struct("<I")
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java's ``Utils.murmur2``; aiokafka's ``partitioner.murmur2`` gives the same, a test
    pins it) over whole 32-bit words at once: the worker hashes the key of every record it produces."""
    n = len(data)
    h = 0x9747B28C ^ n
    end = n & ~3
    for (k,) in _WORDS.iter_unpack(data[:end]):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = n & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest:
        h = ((h ^ data[end]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def _partition(h: int, partitions: int) -> int:
    return (h & 0x7FFFFFFF) % partitions  # aiokafka's and Java's default for a keyed record (h: its murmur2)


def murmur2_many(keys: list[bytes]) -> list[int]:
    """``murmur2`` of many keys: numpy over their words when all have one length, a multiple of 4 (the
    worker's record ids: 16 bytes), else key by key."""
    n = len(keys)
    size = len(keys[0]) if keys else 0
    if n < 8 or size % 4 or any(len(k) != size for k in keys):
        return [murmur2(k) for k in keys]
    m, mask = np.uint64(_M), np.uint64(_MASK)  # uint64 products wrap mod 2^64: their low 32 bits are exact
    words = np.frombuffer(b"".join(keys), "<u4").reshape(n, size // 4).astype(np.uint64)
    h = np.full(n, 0x9747B28C ^ size, dtype=np.uint64)
    for j in range(size // 4):
        k = (words[:, j] * m) & mask
        k = ((k ^ (k >> np.uint64(24))) * m) & mask
        h = ((h * m) & mask) ^ k
    h = ((h ^ (h >> np.uint64(13))) * m) & mask
    out: list[int] = (h ^ (h >> np.uint64(15))).tolist()
    return out


class TopicBatches:
    """Records for one topic, produced at the next `handover` as aiokafka batches, one per partition
    (partition = the default partitioner's, murmur2 of the key, as a keyed `Topic.send` would choose).

    Durability is Faust's: it flushes the producer (these batches included) before it commits offsets."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.waiting: dict[int, list[tuple[bytes, bytes, int]]] = {}

    def add(self, key: bytes, value: bytes, timestamp_ms: int) -> None:
        self.waiting.setdefault(_partition(murmur2(key), self.partitions), []).append((key, value, timestamp_ms))

    def add_many(self, items: list[tuple[bytes, bytes, int]]) -> None:
        """``add`` for many (key, value, timestamp_ms), their keys hashed together (``murmur2_many``)."""
        parts = self.partitions
        waiting = self.waiting
        for h, item in zip(murmur2_many([k for k, _v, _t in items]), items, strict=True):
            waiting.setdefault(_partition(h, parts), []).append(item)

    def __len__(self) -> int:
        return sum(len(v) for v in self.waiting.values())

    def handover(self, app: Any) -> Coroutine[Any, Any, None] | None:
        """Take every waiting record (None: none waits); awaiting the result hands them to the producer.
        If that raises, they wait again, before anything added since, and the next hand-over sends them
        (consumers de-duplicate by key)."""
        if not self.waiting:
            return None
        taken, self.waiting = self.waiting, {}
        return self._send(app, taken)

    async def _send(self, app: Any, taken: dict[int, list[tuple[bytes, bytes, int]]]) -> None:
        try:
            producer = app.producer._ensure_producer()
            for partition, items in taken.items():
                batch = producer.create_batch()
                for key, value, ts in items:
                    if batch.append(key=key, value=value, timestamp=ts) is None:  # full: send it, start another
                        await producer.send_batch(batch, self.topic, partition=partition)
                        batch = producer.create_batch()
                        if batch.append(key=key, value=value, timestamp=ts) is None:
                            raise ValueError(f"a record of {len(value)} bytes does not fit a produce batch")
                # aiokafka waits here until the partition's previous batch left for the broker: the
                # checkpoint hands over in the background (streams/checkpoint.py), not in the agent's way
                await producer.send_batch(batch, self.topic, partition=partition)
        except BaseException:
            for partition, items in taken.items():
                self.waiting[partition] = items + self.waiting.get(partition, [])
            raise
