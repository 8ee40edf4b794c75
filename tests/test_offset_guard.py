"""OffsetGuard: the agents process each partition's offsets exactly in order from the committed offset.

The consumer here is a small stand-in with the four things the guard reads (generation, assignment,
committed offsets; the log start comes from a function) and records the seeks it is asked for; the race itself (a stale
batch delivered after a rebalance) is reproduced message by message. The real-cluster proof is
tests/faults/test_worker_faults.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rstscope.streams.offsets import OffsetGuard


class TP(NamedTuple):
    topic: str
    partition: int


P0 = TP("packets", 0)


@dataclass
class Msg:
    offset: int
    generation_id: int = 1
    tp: Any = P0


@dataclass
class Consumer:
    committed: dict[Any, int | None] = field(default_factory=dict)
    assigned: set[Any] = field(default_factory=lambda: {P0})
    seeks: list[tuple[Any, int]] = field(default_factory=list)

    @property
    def _committed_offset(self) -> dict[Any, int | None]:
        return self.committed

    def assignment(self) -> set[Any]:
        return self.assigned

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


@dataclass
class App:
    consumer: Consumer
    consumer_generation_id: int = 1


def run(guard: OffsetGuard, msgs: list[Msg]) -> list[int]:
    async def go() -> list[int]:
        return [m.offset for m in msgs if await guard.admit(m)]

    return asyncio.run(go())


def make(committed: int | None = None, earliest: int = 0) -> tuple[OffsetGuard, Consumer, Counter[str]]:
    c = Consumer(committed={P0: committed})
    counters: Counter[str] = Counter()
    marks = {"lo": earliest, "hi": 10_000}
    g = OffsetGuard(App(c), counters, "t", "packets", lambda topic, partition: (marks["lo"], marks["hi"]))
    g.marks = marks  # type: ignore[attr-defined]  # the test moves the log's end
    return g, c, counters


def test_contiguous_from_committed_offset_all_admitted() -> None:
    g, c, n = make(committed=100)
    assert run(g, [Msg(o) for o in range(100, 110)]) == list(range(100, 110))
    assert not c.seeks and not n


def test_no_commit_yet_starts_at_the_log_start() -> None:
    g, c, _ = make(committed=None, earliest=7)
    assert run(g, [Msg(o) for o in range(7, 10)]) == [7, 8, 9]


def test_stale_batch_ahead_of_committed_is_refused_and_the_partition_seeks_back() -> None:
    """The issue-7 race: after the rebalance a batch 450.. arrives while 300 is committed; then, after
    the seek, the transport re-delivers 300..; only the contiguous run from 300 is processed."""
    g, c, n = make(committed=300)
    stale = [Msg(o) for o in range(450, 455)]
    refetched = [Msg(o) for o in range(300, 460)]
    assert run(g, stale) == []
    asyncio.run(g.tick())  # the repair runs in the timer, not in the agent
    assert run(g, refetched) == list(range(300, 460))
    assert c.seeks == [(P0, 300)]  # one seek, not one per stale message
    assert n["offset_gap:t"] == 5 and n["offset_seek:t"] == 1


def test_a_gap_mid_stream_seeks_back_and_older_offsets_are_dropped() -> None:
    g, c, n = make(committed=0)
    assert run(g, [Msg(0), Msg(1), Msg(5)]) == [0, 1]
    asyncio.run(g.tick())
    assert run(g, [Msg(1), Msg(2), Msg(3)]) == [2, 3]
    assert c.seeks == [(P0, 2)]
    assert n["offset_behind:t"] == 1


def test_old_generation_and_unassigned_partitions_are_dropped() -> None:
    g, c, n = make(committed=0)
    other = TP("packets", 1)
    assert run(g, [Msg(0, generation_id=0), Msg(0, tp=other), Msg(0)]) == [0]
    assert n["offset_stale:t"] == 1 and n["offset_unassigned:t"] == 1


def test_revoke_restarts_from_the_new_committed_offset() -> None:
    g, c, _ = make(committed=0)
    assert run(g, [Msg(0), Msg(1)]) == [0, 1]
    g.revoke([P0])
    c.committed[P0] = 1  # the new generation starts from what the group committed
    g.app.consumer_generation_id = 2
    assert run(g, [Msg(1, 2), Msg(2, 2)]) == [1, 2]


def test_tick_seeks_again_while_the_expected_offset_does_not_come() -> None:
    """Stale messages delivered after the seek moved the transport past it again: the re-fetch was
    dropped and no newer message arrives. The periodic tick repeats the seek."""
    g, c, n = make(committed=7)
    assert run(g, [Msg(44)]) == []
    asyncio.run(g.tick())
    asyncio.run(g.tick())
    assert c.seeks == [(P0, 7)]  # too soon for another
    g.seeked[P0] -= 1.5
    asyncio.run(g.tick())
    assert c.seeks == [(P0, 7), (P0, 7)]
    assert run(g, [Msg(7), Msg(8)]) == [7, 8]
    asyncio.run(g.tick())
    assert len(c.seeks) == 2  # once the expected offset came, no more seeks


def test_a_partition_that_stops_delivering_is_sought_again() -> None:
    """Nothing admitted for STALL_S although the log holds more: seek to where processing stands."""
    g, c, n = make(committed=0)
    assert run(g, [Msg(0), Msg(1)]) == [0, 1]
    asyncio.run(g.tick())
    assert c.seeks == []  # it just made progress
    g.progress[P0] -= 10.5
    asyncio.run(g.tick())
    assert c.seeks == [(P0, 2)] and n["offset_stall:t"] == 1
    # an idle partition at the end of its log is left alone
    g.marks["hi"] = 2  # type: ignore[attr-defined]
    g.seeked.clear()
    g.progress[P0] -= 10.5
    asyncio.run(g.tick())
    assert c.seeks == [(P0, 2)]


def test_a_partition_that_never_delivered_is_sought_to_its_start() -> None:
    g, c, n = make(committed=None, earliest=5)
    asyncio.run(g.tick())  # starts the clock
    g.progress[P0] -= 10.5
    asyncio.run(g.tick())
    assert c.seeks == [(P0, 5)]
    # still nothing delivered (the seek was lost in a broker failover): sought again after STALL_S,
    # and again (found by the soak: it used to seek once and wait forever)
    for k in (2, 3):
        asyncio.run(g.tick())
        g.progress[P0] -= 10.5
        asyncio.run(g.tick())
        assert c.seeks == [(P0, 5)] * k


def test_a_failing_lookup_neither_crashes_the_agent_nor_stops_the_repairs() -> None:
    """The log-start lookup failing (a broker failing over): the message is not processed now, the
    agent goes on, a later message finds the gap and seeks back; the tick repairs the other partitions."""
    g, c, n = make(committed=None, earliest=0)
    p1 = TP("packets", 1)
    c.assigned = {P0, p1}
    c.committed[p1] = None
    fail = [True]

    def marks(topic: str, partition: int) -> tuple[int, int]:
        if fail[0] and partition == 0:
            raise RuntimeError("KafkaError{code=_UNKNOWN_PARTITION}")
        return 0, 100

    g.watermarks = marks
    assert run(g, [Msg(0)]) == [] and n["offset_lookup_error:t"] == 1
    asyncio.run(g.tick())  # starts the clocks (no lookup yet)
    for tp in (P0, p1):
        g.progress[tp] -= 10.5
    asyncio.run(g.tick())  # P0's lookup fails, p1 is still repaired
    assert c.seeks == [(p1, 0)] and n["offset_lookup_error:t"] == 2
    fail[0] = False
    assert run(g, [Msg(1)]) == [] and g.seeked.get(P0) is not None  # a gap: 0 is expected
    assert run(g, [Msg(0), Msg(1)]) == [0, 1]
