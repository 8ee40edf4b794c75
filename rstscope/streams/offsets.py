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

Watermarks = Callable[[str, int], tuple[int, int]]  # (topic, partition) -> (log start, end offset), blocking
RESEEK_S = 1.0  # while waiting for a seek to take effect, at most one further seek per partition per second
STALL_S = 10.0  # a partition with more in its log that delivered nothing this long is sought again


class OffsetGuard:
    """Admit each partition's messages strictly in offset order from the committed offset on."""

    def __init__(self, app: Any, counters: Counter[str], name: str, topic: str, watermarks: Watermarks) -> None:
        self.app = app
        self.watermarks = watermarks
        self.counters = counters
        self.name = name
        self.topic = topic
        self.next: dict[Any, int] = {}  # tp -> the only offset that may be processed next
        self.seeked: dict[Any, float] = {}  # tp -> monotonic time of the last seek back
        self.progress: dict[Any, float] = {}  # tp -> monotonic time of the last admitted message

    def revoke(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self.next.pop(tp, None)
            self.seeked.pop(tp, None)
            self.progress.pop(tp, None)

    def _count(self, what: str) -> None:
        self.counters[f"offset_{what}:{self.name}"] += 1

    async def _start(self, consumer: Any, tp: Any) -> int:
        """Where processing of a newly assigned partition starts: its committed offset, else the log start."""
        committed = consumer._committed_offset.get(tp)  # set by Faust's seek to committed on assignment
        if committed is not None:
            return int(committed)
        # A blocking lookup on purpose (~ms on its own client, only when the group never committed):
        # an agent that yields here while Faust starts its partitions was seen to get gaps and stalls.
        return self.watermarks(tp.topic, tp.partition)[0]

    async def admit(self, msg: Any) -> bool:
        """True if ``msg`` is the next offset of its partition and may be processed (and acked)."""
        app = self.app
        if msg.generation_id != app.consumer_generation_id:
            self._count("stale")
            return False
        consumer = app.consumer
        tp, offset = msg.tp, msg.offset
        want = self.next.get(tp)
        if want is None:  # the first message of the partition since its assignment (revoke clears `next`)
            if tp not in consumer.assignment():
                self._count("unassigned")
                return False
            want = self.next[tp] = await self._start(consumer, tp)
        if offset == want:
            self.next[tp] = offset + 1
            self.progress[tp] = time.monotonic()
            if self.seeked:
                self.seeked.pop(tp, None)
            return True
        if offset < want:
            self._count("behind")  # already processed in this generation (a batch delivered twice)
            return False
        self._count("gap")
        if tp not in self.seeked:  # the next tick seeks back (within RESEEK_S), then again until it comes
            log.warning("rstscope %s: offset %d of %s but %d expected: seeking back", self.name, offset, tp, want)
            self.seeked[tp] = -RESEEK_S
        return False

    async def _seek(self, consumer: Any, tp: Any, offset: int) -> None:
        """Move the fetch position (on the consumer's own thread) and Faust's read offset."""
        self.seeked[tp] = time.monotonic()
        self._count("seek")
        thread = getattr(consumer, "_thread", None)
        if thread is None:
            await consumer.seek(tp, offset)
            return
        # Faust's own `seek` calls aiokafka from this thread while the fetcher runs on the consumer's
        # thread: under load that crashed the fetcher (KeyError in `fetched_records`). Enqueue it
        # there instead (not awaited: a call into that thread from an agent was seen to stall).
        await thread.cast_thread(thread.seek, tp, offset)
        consumer._read_offset[tp] = offset if offset else None  # what Faust's `seek` sets besides

    async def tick(self) -> None:
        """Repair partitions that stopped delivering (call every second).

        - After a seek back, seek again while the expected offset has not come: messages fetched
          before the seek can still be delivered after it and move Faust's read offset past it, so the
          re-fetch is dropped again, and with no newer message `admit` would never run.
        - A partition of ours that admitted nothing for `STALL_S` although its log holds more than we
          processed is sought to where we are (`offset_stall`): faust-streaming was seen to stop
          delivering a partition after a rebalance, with nothing logged."""
        consumer = self.app.consumer
        now = time.monotonic()
        for tp in consumer.assignment():
            if tp.topic != self.topic:
                continue
            seeked = self.seeked.get(tp)
            if seeked is not None:
                if now - seeked >= RESEEK_S and tp in self.next:
                    await self._seek(consumer, tp, self.next[tp])
                continue
            last = self.progress.setdefault(tp, now)  # the clock starts at the first tick after assignment
            if now - last < STALL_S:
                continue
            self.progress[tp] = now  # look again in STALL_S
            lo, hi = self.watermarks(tp.topic, tp.partition)  # blocking, ~ms, only for idle partitions
            pos = self.next.get(tp)
            if pos is None:
                committed = consumer._committed_offset.get(tp)
                pos = int(committed) if committed is not None else lo
            if hi > pos:
                self._count("stall")
                log.warning("rstscope %s: %s delivered nothing for %.0f s, at %d of %d: seeking to %d",
                            self.name, tp, STALL_S, pos, hi, pos)
                await self._seek(consumer, tp, pos)


def periodic(app: Any, interval: float, counters: Counter[str], name: str) -> Callable[[Any], Any]:
    """`app.timer` that survives its function raising: a Faust timer whose function raises once stops
    for good (a flush that never runs again holds every later offset and row). Counted and logged."""

    def register(fun: Any) -> Any:
        async def guarded() -> None:
            try:
                await fun()
            except Exception:
                counters[f"timer_error:{name}"] += 1
                log.exception("rstscope: %s failed (retried in %.1f s)", name, interval)

        guarded.__qualname__ = guarded.__name__ = name
        return app.timer(interval=interval, name=name)(guarded)

    return register


def watermark_reader(bootstrap: str, security: dict[str, str] | None = None) -> Watermarks:
    """A blocking (topic, partition) -> (low, high) watermark lookup on its own confluent-kafka client
    (not through Faust's consumer thread)."""
    client: list[Any] = []

    def watermarks(topic: str, partition: int) -> tuple[int, int]:
        from confluent_kafka import Consumer, TopicPartition

        if not client:
            client.append(Consumer({**(security or {}), "bootstrap.servers": bootstrap,
                                    "group.id": "rstscope-offset-guard", "enable.auto.commit": False}))
        lo, hi = client[0].get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        return int(lo), int(hi)

    return watermarks


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
