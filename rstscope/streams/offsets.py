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

The Faust internals this needs (the committed offset, a seek on the consumer's thread, a consumer that
never invents gaps) are in streams/faust_internals.py.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from rstscope.streams.faust_internals import committed_offset, seek

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
        committed = committed_offset(consumer, tp)  # set by Faust's seek to committed on assignment
        if committed is not None:
            return committed
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
            try:
                want = self.next[tp] = await self._start(consumer, tp)
            except Exception as e:  # e.g. the broker of the partition is failing over: not now, and no crash
                self._count("lookup_error")
                log.warning("rstscope %s: where %s starts is unknown for now (%s): not processing yet",
                            self.name, tp, e)
                return False  # later messages find a gap and seek back to where the partition starts
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
        """Move the fetch position back to ``offset`` (and Faust's read offset)."""
        self.seeked[tp] = time.monotonic()
        self._count("seek")
        await seek(consumer, tp, offset)

    async def tick(self) -> None:
        """Repair partitions that stopped delivering (call every second).

        - After a seek back, seek again while the expected offset has not come: messages fetched
          before the seek can still be delivered after it and move Faust's read offset past it, so the
          re-fetch is dropped again, and with no newer message `admit` would never run.
        - A partition of ours that admitted nothing for `STALL_S` although its log holds more than we
          processed is sought to where we are (`offset_stall`): faust-streaming was seen to stop
          delivering a partition after a rebalance, with nothing logged."""
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic != self.topic:
                continue
            try:
                await self._repair(consumer, tp)
            except Exception as e:  # one partition's failed lookup (a broker failing over) must not stop the rest
                self._count("lookup_error")
                log.warning("rstscope %s: repairing %s failed (%s); trying again", self.name, tp, e)

    async def _repair(self, consumer: Any, tp: Any) -> None:
        now = time.monotonic()
        seeked = self.seeked.get(tp)
        if seeked is not None:
            if tp in self.next:
                if now - seeked >= RESEEK_S:
                    await self._seek(consumer, tp, self.next[tp])
                return
            # sought by the stall check before anything was admitted: nothing to wait for; the stall
            # check below looks again every STALL_S (it used to give up after one seek)
            del self.seeked[tp]
        last = self.progress.setdefault(tp, now)  # the clock starts at the first tick after assignment
        if now - last < STALL_S:
            return
        self.progress[tp] = now  # look again in STALL_S
        lo, hi = self.watermarks(tp.topic, tp.partition)  # blocking, ~ms, only for idle partitions
        pos = self.next.get(tp)
        if pos is None:
            committed = committed_offset(consumer, tp)
            pos = committed if committed is not None else lo
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

        for attempt in (1, 2):
            if not client:
                client.append(Consumer({**(security or {}), "bootstrap.servers": bootstrap,
                                        "group.id": "rstscope-offset-guard", "enable.auto.commit": False}))
            try:
                lo, hi = client[0].get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                return int(lo), int(hi)
            except Exception:
                # after a broker failover this client was seen to answer "Unknown partition" for good:
                # a fresh one reads fresh metadata
                client.pop().close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    return watermarks
