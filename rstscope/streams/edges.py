"""Event time of one packets partition from the many edges that feed it (docs/streaming.md).

Every edge (capture host) has a stable id, carried on its batches and watermarks. An edge's
watermark is the larger of its last watermark and its latest packet time: it promises nothing older
follows from it. A partition's event time is the *smallest* watermark of its live edges, so one edge
that runs ahead (or whose clock is fast) cannot close a window the others are still filling.

A worker cannot know an edge it has not heard from yet: when a partition is new to it (start-up,
rebalance, replay), its event time starts moving only ``warmup_s`` (default: ``idle_s``) after its
first message. Edges send a watermark to every partition each second, so by then every live edge has
spoken and holds its windows.

An edge silent on a partition for ``idle_s`` of wall-clock time is *idle*: it stops holding windows
back (a dead capture host must not stall everyone), and is counted. When it speaks again it is live
and holds windows again from where they are (event time never goes back; its packets for windows
that closed meanwhile are counted as late, per edge). An edge that sent its end-of-input watermark
(``eof``) holds nothing back; once every edge of a partition has ended or is idle (and one has
ended), the input is over: the worker judges what is left at the cutoff, as ``rstscope analyze`` does.

Pure bookkeeping: the wall clock comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

from rstscope.streams.status import EdgeStatus

NEVER = float("-inf")


@dataclass(slots=True)
class EdgeClock:
    """What a partition knows of one edge."""

    watermark: float = NEVER  # nothing older follows from this edge (its packets and watermarks)
    seen: float = 0.0  # wall clock when it was last heard on this partition
    eof: bool = False  # it sent its end-of-input watermark
    idle: bool = False  # silent for idle_s: not holding windows back
    late: int = 0  # its packets for windows already closed
    run: int = -1  # the run id and number of its last batch taken on this partition (-1: none yet)
    seq: int = -1


class EdgeClocks:
    """The edges of one partition and the event time they allow."""

    def __init__(self, idle_s: float, start: float = 0.0, warmup_s: float = 0.0) -> None:
        self.idle_s = idle_s
        self.warm_at = start + warmup_s  # event time stays put before this wall-clock time
        self.edges: dict[str, EdgeClock] = {}
        self.ending = 0  # edges that sent eof (ended() is asked per packet: 0 answers it at once)

    def _edge(self, edge: str, now: float) -> EdgeClock:
        c = self.edges.get(edge)
        if c is None:
            c = self.edges[edge] = EdgeClock(seen=now)
        c.seen = now
        if c.idle:
            c.idle = False  # it returned: it holds windows again
        if c.eof:
            c.eof = False  # a new run of a restarted edge
            self.ending -= 1
        return c

    def heard(self, edge: str, ts: float, now: float) -> EdgeClock:
        """A packet (or a batch whose latest packet is at ``ts``) from ``edge``."""
        c = self._edge(edge, now)
        if ts > c.watermark:
            c.watermark = ts
        return c

    def promised(self, edge: str, ts: float, eof: bool, now: float) -> None:
        """A watermark from ``edge``."""
        c = self._edge(edge, now)
        if ts > c.watermark:
            c.watermark = ts
        if eof:
            c.eof = True
            self.ending += 1

    def check_idle(self, now: float) -> list[str]:
        """Mark the edges silent for idle_s as idle; returns those that just went idle."""
        out = []
        for name, c in self.edges.items():
            if not c.idle and not c.eof and now - c.seen >= self.idle_s:
                c.idle = True
                out.append(name)
        return out

    def event_time(self, now: float) -> float:
        """The smallest watermark of the live edges; with none live (all ended or idle), the largest of
        all; NEVER while warming up."""
        if now < self.warm_at:
            return NEVER
        if len(self.edges) == 1:  # the common case, asked per packet
            return next(iter(self.edges.values())).watermark
        live = [c.watermark for c in self.edges.values() if not (c.idle or c.eof)]
        if live:
            return min(live)
        return max((c.watermark for c in self.edges.values()), default=NEVER)

    def ended(self, now: float) -> float | None:
        """When every edge has ended or is idle and one has ended: the end of the input (the latest
        ended edge's last watermark); else None. Never while warming up: an edge not heard yet may
        still be sending."""
        if not self.ending or now < self.warm_at or not all(c.eof or c.idle for c in self.edges.values()):
            return None
        ends = [c.watermark for c in self.edges.values() if c.eof]
        return max(ends) if ends else None

    def reset(self) -> None:
        """After the input ended: the next packets start a new run (late counts are kept)."""
        for c in self.edges.values():
            c.eof = False
            c.watermark = NEVER
        self.ending = 0

    @staticmethod
    def number(clock: EdgeClock, run: int, seq: int) -> int:
        """Take a batch numbered (``run``, ``seq``) from ``clock``'s edge: -1 if it was taken already (the
        transport wrote it twice: an idempotent producer still duplicates around a whole-cluster outage,
        librdkafka issue 4953), else how many of that run's batches are missing before it (lost in
        delivery; the edge counts why). A new run (a restarted edge) starts afresh. Per partition and
        in memory: a replay rebuilds it with the table, from where no connection had state."""
        if clock.run == run:
            if seq <= clock.seq:
                return -1
            missing = seq - clock.seq - 1
        else:
            missing = 0
        clock.run, clock.seq = run, seq
        return missing

    def status(self, partition: int) -> list[EdgeStatus]:
        return [EdgeStatus(partition, name, c.watermark, c.eof, c.idle, c.late) for name, c in self.edges.items()]
