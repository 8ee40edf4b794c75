"""Offset continuity for the agents: process each partition's offsets exactly in order, or not at all.

Why: faust-streaming (0.15.3) can hand an agent offsets that are not contiguous around a rebalance.
`Consumer.getmany` reads the generation id *after* awaiting a fetch, so a batch fetched before a
rebalance is delivered after it stamped as current; it moves Faust's read offset past the committed
offset, and the re-fetch from the committed offset is then dropped ("DROPPED MESSAGE ROFF"). Faust's
gap bookkeeping (``_add_gap``) then treats the skipped offsets as acked, so in-order acks alone can
commit past records nobody processed: connections lost, or rollup counts lost (issue 7).

The guard admits a message only if it is the next offset of its partition, starting at the group's
committed offset (or the log start) after every assignment. Anything else is dropped uncounted in
the stage (and counted here): older offsets were already processed; a newer one means the transport
skipped some, so the guard seeks the partition back to the expected offset and waits for it. Stale
messages of an older generation or of a partition no longer assigned are dropped too; the partition's
next owner replays them from the committed offset.

`GaplessApp` is a Faust app whose consumer never invents gaps: the agents' input topics are neither
compacted nor transactional, so a jump in offsets is always a transport artefact, never a real gap.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)

LogStart = Callable[[str, int], int]  # (topic, partition) -> the partition's first offset (blocking call)
RESEEK_S = 1.0  # while waiting for a seek to take effect, at most one further seek per partition per second


class OffsetGuard:
    """Admit each partition's messages strictly in offset order from the committed offset on."""

    def __init__(self, app: Any, counters: Counter[str], name: str, log_start: LogStart) -> None:
        self.app = app
        self.log_start = log_start
        self.counters = counters
        self.name = name
        self.next: dict[Any, int] = {}  # tp -> the only offset that may be processed next
        self.seeked: dict[Any, float] = {}  # tp -> monotonic time of the last seek back

    def revoke(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self.next.pop(tp, None)
            self.seeked.pop(tp, None)

    def _count(self, what: str) -> None:
        self.counters[f"offset_{what}:{self.name}"] += 1

    async def _start(self, consumer: Any, tp: Any) -> int:
        """Where processing of a newly assigned partition starts: its committed offset, else the log start."""
        committed = consumer._committed_offset.get(tp)  # set by Faust's seek to committed on assignment
        if committed is not None:
            return int(committed)
        # A blocking lookup on purpose (~ms on its own client, only when the group never committed):
        # an agent that yields here while Faust starts its partitions was seen to get gaps and stalls.
        return self.log_start(tp.topic, tp.partition)

    async def admit(self, msg: Any) -> bool:
        """True if ``msg`` is the next offset of its partition and may be processed (and acked)."""
        app = self.app
        if msg.generation_id != app.consumer_generation_id:
            self._count("stale")
            return False
        consumer = app.consumer
        tp, offset = msg.tp, msg.offset
        if tp not in consumer.assignment():
            self._count("unassigned")
            return False
        want = self.next.get(tp)
        if want is None:
            want = self.next[tp] = await self._start(consumer, tp)
        if offset == want:
            self.next[tp] = offset + 1
            self.seeked.pop(tp, None)
            return True
        if offset < want:
            self._count("behind")  # already processed in this generation (a batch delivered twice)
            return False
        self._count("gap")
        if time.monotonic() - self.seeked.get(tp, -RESEEK_S) >= RESEEK_S:
            log.warning("rstscope %s: offset %d of %s but %d expected: seeking back", self.name, offset, tp, want)
            await self._seek(consumer, tp, want)
        return False

    async def _seek(self, consumer: Any, tp: Any, offset: int) -> None:
        self.seeked[tp] = time.monotonic()
        self._count("seek")
        await consumer.seek(tp, offset)  # aiokafka's fetch position and Faust's read offset

    async def tick(self) -> None:
        """Seek again where the expected offset has not come since the last seek (call every second).

        Messages fetched before a seek can still be delivered after it and move Faust's read offset
        past the seek, so the re-fetch is dropped again; with no newer message to trigger `admit`, the
        partition would wait forever."""
        app = self.app
        now = time.monotonic()
        for tp, t in list(self.seeked.items()):
            if now - t >= RESEEK_S and tp in self.next and tp in app.consumer.assignment():
                await self._seek(app.consumer, tp, self.next[tp])


def log_start_reader(bootstrap: str, security: dict[str, str] | None = None) -> LogStart:
    """A blocking (topic, partition) -> low watermark lookup on its own confluent-kafka client."""
    client: list[Any] = []

    def low(topic: str, partition: int) -> int:
        from confluent_kafka import Consumer, TopicPartition

        if not client:
            client.append(Consumer({**(security or {}), "bootstrap.servers": bootstrap,
                                    "group.id": "rstscope-offset-guard", "enable.auto.commit": False}))
        lo, _hi = client[0].get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        return int(lo)

    return low


def gapless_app_class() -> type[faust.App]:
    """A `faust.App` whose consumer does not fill offset gaps (imported lazily: faust is heavy)."""
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
