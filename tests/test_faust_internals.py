"""The worker refuses a faust-streaming or aiokafka release its use of their internals was not proven with."""

from __future__ import annotations

from importlib import metadata

import pytest

from rstscope.streams import faust_internals
from rstscope.streams.faust_internals import UnprovenVersion, check_versions


def test_the_installed_versions_are_proven() -> None:
    check_versions()  # what pyproject.toml pins


@pytest.mark.parametrize(("package", "version"), [("faust-streaming", "0.16.0"), ("aiokafka", "0.13.9")])
def test_an_unproven_version_fails_loudly(monkeypatch: pytest.MonkeyPatch, package: str, version: str) -> None:
    real = metadata.version
    monkeypatch.setattr(faust_internals.metadata, "version", lambda p: version if p == package else real(p))
    with pytest.raises(UnprovenVersion, match=f"{package} {version}"):
        check_versions()


def test_batches_partition_like_a_keyed_send() -> None:
    """Connection records produced in batches land where a keyed `Topic.send` would put them (murmur2)."""
    from aiokafka.partitioner import DefaultPartitioner

    batches = faust_internals.TopicBatches("t", 8)
    keys = [f"{i:016x}".encode() for i in range(200)]
    for k in keys:
        batches.add(k, b"{}", 0)
    default = DefaultPartitioner()
    placed = {k: p for p, items in batches.waiting.items() for k, _v, _t in items}
    assert all(placed[k] == default(k, list(range(8)), list(range(8))) for k in keys)
    assert len(batches) == 200


def test_many_keys_hash_and_land_as_one_by_one() -> None:
    """``murmur2_many`` (numpy over words) is ``murmur2`` for every key, whatever the batch: record ids,
    other lengths, mixed lengths, a few keys; ``add_many`` places them as ``add`` does."""
    import random

    rng = random.Random(11)
    batches = [[f"{rng.getrandbits(64):016x}".encode() for _ in range(500)], [rng.randbytes(4) for _ in range(50)],
               [rng.randbytes(36) for _ in range(50)], [rng.randbytes(rng.randrange(20)) for _ in range(50)],
               [rng.randbytes(16) for _ in range(3)], [b"\xff" * 16] * 9, []]
    for keys in batches:
        assert faust_internals.murmur2_many(keys) == [faust_internals.murmur2(k) for k in keys]
    one, many = faust_internals.TopicBatches("t", 12), faust_internals.TopicBatches("t", 12)
    items = [(k, b"v%d" % i, i) for i, k in enumerate(batches[0])]
    for item in items:
        one.add(*item)
    many.add_many(items)
    assert many.waiting == one.waiting


def test_murmur2_is_kafkas() -> None:
    """The worker's murmur2 against aiokafka's for keys of every tail length, and against the Java
    client's own test vectors."""
    import random

    from aiokafka.partitioner import murmur2 as reference

    rng = random.Random(7)
    for n in range(48):
        for _ in range(200):
            key = rng.randbytes(n)
            assert faust_internals.murmur2(key) == reference(key)
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (the Java client's vectors, as signed ints)
    java = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
            b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
            b"abc": 479470107}
    for key, signed in java.items():
        assert faust_internals.murmur2(key) == signed & 0xFFFFFFFF


def test_a_write_on_a_connection_uvloop_closed_is_a_broken_connection() -> None:
    """aio-libs/aiokafka#1038: a broker dies, uvloop closes the socket's transport before aiokafka's
    reader notices, and the next request's write raises RuntimeError, which crashed the worker's
    fetcher. Mended, it is the KafkaConnectionError the fetcher retries, and the connection is closed."""
    import asyncio

    import uvloop
    from aiokafka.conn import AIOKafkaConnection, CloseReason
    from aiokafka.errors import IncompatibleBrokerVersion, KafkaConnectionError
    from aiokafka.protocol.admin import ApiVersionRequest
    from aiokafka.protocol.metadata import MetadataRequest

    faust_internals.mend_closed_transport_writes()
    faust_internals.mend_closed_transport_writes()  # idempotent: wrapped once

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        closed: list[CloseReason] = []
        conn = AIOKafkaConnection("127.0.0.1", port, on_close=lambda _c, reason: closed.append(reason))
        # a connected AIOKafkaConnection whose reader has not yet seen the socket close
        conn._reader, conn._writer = await asyncio.open_connection("127.0.0.1", port)
        conn._read_task = asyncio.get_running_loop().create_future()
        writer = conn._writer
        writer.transport.close()
        await asyncio.sleep(0.05)  # uvloop finishes closing the handle
        with pytest.raises(RuntimeError, match="handler is closed"):
            writer.write(b"\0")  # the bug's condition: the raw write raises
        with pytest.raises(IncompatibleBrokerVersion):  # aiokafka's own errors (RuntimeErrors) stay as they are
            conn.send(MetadataRequest([]))  # its version is not known before ApiVersions
        assert conn._writer is writer
        with pytest.raises(KafkaConnectionError, match="broken") as raised:
            conn.send(ApiVersionRequest())  # the first request of every connection
        assert isinstance(raised.value.__cause__, RuntimeError)
        assert closed == [CloseReason.CONNECTION_BROKEN]
        assert conn._writer is None and not conn.connected()
        server.close()

    uvloop.run(scenario())


async def test_a_failed_handover_leaves_its_records_waiting_first() -> None:
    """A hand-over that raises puts its records back, before those added since; the next sends them all."""

    class Batch:
        def __init__(self) -> None:
            self.keys: list[bytes] = []

        def append(self, key: bytes, value: bytes, timestamp: int) -> object:
            self.keys.append(key)
            return object()

    class Producer:
        def __init__(self) -> None:
            self.fail = True
            self.sent: list[tuple[int, list[bytes]]] = []

        def create_batch(self) -> Batch:
            return Batch()

        async def send_batch(self, batch: Batch, topic: str, partition: int) -> None:
            if self.fail:
                raise OSError("the broker went away")
            self.sent.append((partition, batch.keys))

    producer = Producer()
    app = type("App", (), {"producer": type("P", (), {"_ensure_producer": lambda self: producer})()})()
    out = faust_internals.TopicBatches("t", 1)
    out.add(b"a", b"", 0)
    sending = out.handover(app)
    assert sending is not None and out.handover(app) is None  # taken: nothing waits
    out.add(b"b", b"", 0)  # added while the first hand-over is under way
    with pytest.raises(OSError):
        await sending
    assert [k for k, _v, _t in out.waiting[0]] == [b"a", b"b"]
    producer.fail = False
    again = out.handover(app)
    assert again is not None
    await again
    assert producer.sent == [(0, [b"a", b"b"])] and not out.waiting
