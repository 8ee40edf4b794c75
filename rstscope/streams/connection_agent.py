"""The connection stage: packets topic -> one ConnectionTable per partition -> classified records.

All packets of a connection share a packets partition (keyed by 4-tuple), so each partition gets its
own table, advanced by that partition's event time (the max packet or watermark time it has seen).

When connections come out (SPEC 4, core/table.py): an ended one (RST, FIN, its 10th packet) once the
partition's event time passes its last packet by ``grace_s``; one that has not ended when its window
closes, or when every edge feeding the partition sent its end-of-input watermark (``eof``): the
table is then closed at that watermark's time, the analyze rule (cutoff = the end of the input).

Offsets: a message is *done* when nothing in memory depends on it any more: a watermark or a bad
record at once, a packet when its connection is finalized (or when the table dropped it). Messages
are acked strictly in offset order, only up to the first one that is not done, so the committed
offset never passes a packet whose connection still lives only in this process's memory. (Faust's
own gap check is not enough: it ignores a gap at the head of a partition when nothing was committed
yet, and a one-message gap after a commit; acking in order never creates a gap.) After a crash or a
rebalance the new owner replays from the committed offset with an empty table; connections that were
already emitted come out again with the same id, and the rollup stage drops them.

A replay from an empty table decides the same connections only if it starts where no tuple had state:
once a tuple's first connection of a window opened, the tuple keeps state (the connection, then the
marker of the decided one) until the window closes, and that state decides later packets (a SYN that
repeats a decided connection's sequence number is absorbed: it must not open a connection on
replay). So the packet that opened a tuple's first connection in a window is *pinned*: not acked
before its window closed (or the input ended), even if its connection was emitted long before. In
window mode this costs little (connections that have not ended hold their window's offsets anyway).

QUIC (mixed batches, codecs/packet.py kind 3) follows the same discipline with a bytes-free QUIC
attempt table per partition (``quic.table.QuicTable``) next to the connection table, advanced, closed
and unpinned by the same event time: a datagram's message is held while its attempt is open, and the
datagram that opened a tuple's first attempt in a window is pinned until that window closes (an
ended attempt's state decides later datagrams there too: ``quic.table.step``).

Classification is batched: ``take`` gives the finished connections (``Decided``) and ``records``
classifies a batch of them in one numpy pass (``fastpath.verdicts.make_records``: what ``make_record``
gives each). The agent classifies what a checkpoint finished, right before producing it; ``feed`` does
both for one message.

`ConnectionStage` is transport-free (bytes in, dicts out) so it can be benchmarked and unit-tested;
`build` wires it into a Faust app.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, NamedTuple

from rstscope.codecs.errors import CodecError, MalformedRecord
from rstscope.codecs.jsonl import dumps
from rstscope.codecs.packet import EdgeGeo, Watermark, decode_message
from rstscope.config import Topology
from rstscope.core.record import ConnectionRecord, make_record
from rstscope.core.rollup import bucket_of
from rstscope.core.table import Connection, ConnectionTable, Finished, window_of
from rstscope.fastpath.verdicts import make_records
from rstscope.geo import GeoDB
from rstscope.kafka.roles import role_spec
from rstscope.packet import PacketRecord, client_of
from rstscope.quic.packet import QuicDatagram
from rstscope.quic.record import QuicRecord, record_of
from rstscope.quic.table import Attempt, QuicFinished, QuicTable
from rstscope.streams.checkpoint import Checkpoint
from rstscope.streams.edges import NEVER, EdgeClock, EdgeClocks
from rstscope.streams.faust_internals import AckRef, TopicBatches
from rstscope.streams.offsets import OffsetGuard
from rstscope.streams.status import EdgeStatus

log = logging.getLogger(__name__)
Record = ConnectionRecord | QuicRecord  # what the stage emits (a QUIC record carries "transport": "quic")


class Decided(NamedTuple):
    """A finished connection to classify, and where its client is (country, asn, as_name): its record
    is built with the others of its batch (``ConnectionStage.records``)."""

    conn: Connection
    place: tuple[str, int, str]


Output = Record | Decided  # what ``take`` gives: QUIC records (built at once) and finished connections


class ProcessingError(CodecError):
    """A record that decoded but could not be processed (a bug, counted and dead-lettered, not a crash)."""

    reason = "processing_error"


class AheadOfClock(CodecError):
    """A record further ahead of this worker's clock than edges.max_ahead_s: its edge's clock is off
    (or the record is corrupt); accepting it would close every window of every other edge."""

    reason = "ahead_of_clock"


class _Entry:
    """One consumed message waiting to be acked: once nothing holds it (``holds == 0``)."""

    __slots__ = ("handle", "holds")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        # its packets that open connections still hold, plus its pins (a packet that opened its
        # tuple's first connection of a window that is still open), plus 1 while it is processed
        self.holds = 1


class PartitionState:
    """A partition's connection table, its edges' clocks, and its not-yet-acked messages in offset order.

    Each held packet carries its message's number (``ref``, the table keeps it in the packet's row):
    a message is ``queue[ref - base]`` until it is acked, so nothing per connection is kept here."""

    def __init__(self, topology: Topology, now: float, warmup_s: float) -> None:
        self.table = ConnectionTable(topology.window, auto_advance=False)
        self.qtable = QuicTable(topology.window, auto_advance=False)  # QUIC attempts: the same event time
        self.clocks = EdgeClocks(topology.edges.idle_s, now, warmup_s)
        self.queue: deque[_Entry] = deque()
        self.base = 0  # the number of queue[0]
        self.next_ref = 0  # the number of the next message
        self.pinned: dict[int, list[_Entry]] = {}  # window start -> its tuples' first openers' messages
        self.window = self.closed_before()  # the tables' current window when pins were last checked

    def release(self, ref: int) -> None:
        self.queue[ref - self.base].holds -= 1

    def unpin(self, before: float) -> None:
        """Release the pins of the windows that start before ``before``: those windows are closed, so
        every connection of theirs was finalized (by the same advance of the table)."""
        for w in [w for w in self.pinned if w < before]:
            for e in self.pinned.pop(w):
                e.holds -= 1
        self.window = self.closed_before()

    def closed_before(self) -> int:
        """Windows before this one are closed in both tables (they advance together: one event time)."""
        return min(self.table.current_window, self.qtable.current_window)


class ConnectionStage:
    """Feed (partition, message bytes, ack handle); get records to emit and handles safe to ack."""

    def __init__(self, topology: Topology, geo: GeoDB | None = None,
                 clock: Callable[[], float] = time.time, warmup_s: float | None = None) -> None:
        self.topology = topology
        self.geo = geo or GeoDB.empty()
        self.parts: dict[int, PartitionState] = {}
        self.counters: Counter[str] = Counter()
        self.clock = clock  # wall clock: edge idleness, and the bound on how far ahead an edge may run
        self.max_ahead_s = topology.edges.max_ahead_s
        # a new partition's event time waits this long for its edges to speak (edges.py); 0: one edge only
        self.warmup_s = topology.edges.idle_s if warmup_s is None else warmup_s

    def state(self, partition: int) -> PartitionState:
        st = self.parts.get(partition)
        if st is None:
            st = self.parts[partition] = PartitionState(self.topology, self.clock(), self.warmup_s)
        return st

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker lost: their unacked messages will be replayed by the new owner."""
        for p in partitions:
            st = self.parts.pop(p, None)
            if st is not None:
                self.counters["revoked_open"] += len(st.table.open) + len(st.qtable.open)
                for k, v in st.table.counters.items():
                    self.counters[f"table:{k}"] += v
                for k, v in st.qtable.counters.items():
                    self.counters[f"quic_table:{k}"] += v

    def edge_status(self) -> list[EdgeStatus]:
        """Every edge as every partition of this worker sees it (the metrics page)."""
        return [e for p, st in sorted(self.parts.items()) for e in st.clocks.status(p)]

    def feed(self, partition: int, value: bytes | None,
             handle: Any) -> tuple[list[Record], list[CodecError]]:
        """Process one message (a batch of packets or a watermark). Returns the finished (classified)
        records and the errors of what could not be used (each one counted; the caller dead-letters them)."""
        out, errors = self.take(partition, value, handle)
        return self.records(out), errors

    def take(self, partition: int, value: bytes | None,
             handle: Any) -> tuple[list[Output], list[CodecError]]:
        """``feed`` without building the records: the finished connections come out as ``Decided``."""
        st = self.state(partition)
        entry = _Entry(handle)
        st.queue.append(entry)
        ref = st.next_ref
        st.next_ref += 1
        errors: list[CodecError] = []
        out: list[Output] = []
        try:
            msg = decode_message(value or b"")
            now = self.clock()
            if isinstance(msg, Watermark):
                if msg.ts > now + self.max_ahead_s:
                    raise AheadOfClock(f"watermark at {msg.ts:.3f} is more than {self.max_ahead_s:g} s ahead")
                out = self._watermark(st, msg, now)
            else:
                clock = st.clocks.heard(msg.edge, NEVER, now)
                limit = now + self.max_ahead_s
                n = 0
                if msg.run is not None and msg.seq is not None:
                    missing = EdgeClocks.number(clock, msg.run, msg.seq)
                    if missing < 0:  # a copy of a batch already taken: nothing of it may count twice
                        self.counters["duplicate_batches"] += 1
                        self.counters["duplicate_packets"] += len(msg.packets)
                        msg = msg._replace(packets=[], errors=[], quic=())
                    elif missing:
                        self.counters["batches_missing"] += missing
                for i, e in msg.errors:
                    errors.append(MalformedRecord(f"record {i} of the batch: {e}"))
                # TCP packets and (a mixed batch's) QUIC datagrams, in the order the edge read them
                quic, qi, nq = msg.quic, 0, len(msg.quic)
                for i, (pkt, geo) in enumerate(msg.packets):
                    while qi < nq and quic[qi][0] <= i:
                        out += self._take_datagram(st, ref, entry, clock, quic[qi], now, limit, msg.edge, errors)
                        qi += 1
                    if pkt.ts > limit:
                        errors.append(self._ahead("packet", pkt.ts, msg.edge))
                        continue
                    n += 1
                    out += self._packet(st, ref, entry, clock, pkt, geo, now)
                for item in quic[qi:]:  # datagrams after the batch's last TCP packet
                    out += self._take_datagram(st, ref, entry, clock, item, now, limit, msg.edge, errors)
                self.counters["packets"] += n
        except CodecError as e:
            errors.append(e)
        except Exception as e:  # never crash-loop the worker on one message: dead-letter it, count it
            log.exception("rstscope: a record could not be processed (sent to the dead letters)")
            errors.append(ProcessingError(f"{type(e).__name__}: {e}"))
        for err in errors:
            self.counters[f"dead:{err.reason}"] += 1
        entry.holds -= 1
        return out, errors

    def _advance(self, st: PartitionState, now: float) -> list[Output]:
        """Move the table to the event time the partition's edges allow; close it if the input ended."""
        table, qtable = st.table, st.qtable
        done = []
        qdone: list[QuicFinished] = []
        t = st.clocks.event_time(now)
        if t > table.watermark:
            done = table.advance(t)
        if t > qtable.watermark:
            qdone = qtable.advance(t)
        end = st.clocks.ended(now)
        if end is not None:
            # every edge feeding this partition reached its end of input (or went idle): the analyze
            # rule applies, what has not ended is judged at the cutoff min(window end, the end of input)
            done += table.close(end)
            qdone += qtable.close(end)
            st.clocks.reset()
            st.unpin(float("inf"))  # close() dropped every marker
            self.counters["inputs_ended"] += 1
        elif st.closed_before() != st.window:
            st.unpin(st.closed_before())
        if not done and not qdone:
            return []  # the common case: event time moved, nothing finished
        return self._finish(st, done) + self._finish_quic(st, qdone)

    def _watermark(self, st: PartitionState, wm: Watermark, now: float) -> list[Output]:
        self.counters["watermarks"] += 1
        st.clocks.promised(wm.source, wm.ts, wm.eof, now)
        return self._advance(st, now)

    def _packet(self, st: PartitionState, ref: int, entry: _Entry, clock: EdgeClock, item: PacketRecord,
                geo: EdgeGeo | None, now: float) -> list[Output]:
        """One packet of a batch from the edge whose ``clock`` it moves."""
        table = st.table
        out, window = self._arrive(st, table, clock, item.ts, now)
        done = table.add(item, ref, item.packed_key, window)
        self._taken(st, entry, table.last, table.fresh, window, geo)
        if done:
            out += self._finish(st, done)
        return out

    def _arrive(self, st: PartitionState, table: ConnectionTable | QuicTable, clock: EdgeClock, ts: float,
                now: float) -> tuple[list[Output], int]:
        """What a packet or datagram at ``ts`` does before ``table`` takes it: it moves its edge's clock, and
        with it the partition's event time (the records that finished), and falls in a window (returned;
        one already closed is counted per edge, the table counts it too)."""
        if ts > clock.watermark:
            clock.watermark = ts
        out = self._advance(st, now) if ts > table.watermark else []
        window = int(window_of(ts, table.size))
        if window < table.current_window:
            clock.late += 1
        return out, window

    def _taken(self, st: PartitionState, entry: _Entry, unit: Connection | Attempt | None, fresh: bool, window: int,
               geo: EdgeGeo | None) -> None:
        """After a table took a packet or datagram into ``unit`` (None: dropped it): its message is held
        until the unit is finished, and pinned until ``window`` closes if the unit is its tuple's first
        there (``fresh``: no state in the window before it)."""
        if unit is None:
            return
        entry.holds += 1  # released when the unit is finished
        if geo is not None:
            unit.meta = geo  # the edge hid the client address; it geolocated it first
        if fresh:
            entry.holds += 1
            st.pinned.setdefault(window, []).append(entry)

    def _ahead(self, what: str, ts: float, edge: str) -> AheadOfClock:
        return AheadOfClock(f"{what} at {ts:.3f} is more than {self.max_ahead_s:g} s ahead of this worker's "
                            f"clock (edge {edge!r})")

    def _take_datagram(self, st: PartitionState, ref: int, entry: _Entry, clock: EdgeClock,
                       item: tuple[int, QuicDatagram, EdgeGeo | None], now: float, limit: float, edge: str,
                       errors: list[CodecError]) -> list[Output]:
        """A mixed batch's QUIC datagram, unless it is too far ahead of this worker's clock (an error)."""
        _, dg, geo = item
        if dg.recs[0].ts > limit:
            errors.append(self._ahead("QUIC datagram", dg.recs[0].ts, edge))
            return []
        self.counters["quic_datagrams"] += 1
        return self._datagram(st, ref, entry, clock, dg, geo, now)

    def _datagram(self, st: PartitionState, ref: int, entry: _Entry, clock: EdgeClock, dg: QuicDatagram,
                  geo: EdgeGeo | None, now: float) -> list[Output]:
        """One QUIC datagram: as ``_packet``, with the QUIC attempt table (holds, pins, the same clock)."""
        qt = st.qtable
        out, window = self._arrive(st, qt, clock, dg.recs[0].ts, now)
        done = qt.add(dg.recs, dg.hello, ref)
        self._taken(st, entry, qt.last, qt.fresh, window, geo)
        if done:
            out += self._finish_quic(st, done)
        return out

    def _place(self, meta: object, client: bytes) -> tuple[str, int, str]:
        """(country, asn, as_name) of a connection's client: the edge's geolocation when it hid the
        address (no AS name travels), else this worker's lookup."""
        if isinstance(meta, EdgeGeo):
            return meta.country, meta.asn, ""
        g = self.geo.lookup(client)
        return g.country, g.asn, g.as_name

    def _settled(self, st: PartitionState, refs: Iterable[int], excluded: str | None, counter: str) -> bool:
        """A finished connection or attempt releases its messages; True if it is classified, else its
        exclusion is counted (under ``counter:<why>``)."""
        for r in refs:
            st.release(r)
        if excluded:
            self.counters[f"{counter}:{excluded}"] += 1
            return False
        return True

    def _finish_quic(self, st: PartitionState, done: list[QuicFinished]) -> list[Output]:
        """Records of the finished QUIC attempts; their datagrams' messages are released."""
        if not done:
            return []
        out: list[Output] = [record_of(f, *self._place(f.attempt.meta, f.attempt.key[0])) for f in done
                              if self._settled(st, f.attempt.refs, f.excluded, "quic_excluded")]
        self.counters["quic_records"] += len(out)
        return out

    def _finish(self, st: PartitionState, done: list[Finished]) -> list[Output]:
        """The finalized connections, to classify; their packets' messages are released (the shell
        produces their records before it acks: streams/checkpoint.py)."""
        if not done:
            return []
        place = self._place
        return [Decided(f.conn, place(f.conn.meta, client_of(f.conn.pkey))) for f in done
                if self._settled(st, f.conn.refs, f.excluded, "excluded")]

    def records(self, outputs: list[Output]) -> list[Record]:
        """The records of ``outputs`` (of ``take``, ``tick_pending``), in order: the finished connections
        classified together (``make_records``). Should that raise (a bug), each is tried alone with the
        reference ``make_record``; one that fails is logged and counted (``records_failed``), not emitted."""
        decided = [o for o in outputs if type(o) is Decided]
        if not decided:
            return outputs  # type: ignore[return-value]  # records only (QUIC)
        w = self.topology.window
        try:
            built = make_records([d.conn for d in decided], [d.place for d in decided], w.max_packets,
                                 self.topology.evidence, w.mode)
        except Exception:
            log.exception("rstscope: a batch of connections could not be classified together; one by one")
            return [r for r in (self._one(o) if type(o) is Decided else o for o in outputs) if r is not None]  # type: ignore[misc]
        self.counters["records"] += len(built)
        it = iter(built)
        return [next(it) if type(o) is Decided else o for o in outputs]  # type: ignore[misc]

    def _one(self, d: Decided) -> Record | None:
        """One finished connection's record by the reference (None: it failed, logged and counted)."""
        w = self.topology.window
        try:
            rec = make_record(d.conn, w.max_packets, self.topology.evidence, w.mode, *d.place)
        except Exception:
            log.exception("rstscope: connection %r could not be classified (not emitted)", d.conn)
            self.counters["records_failed"] += 1
            return None
        self.counters["records"] += 1
        return rec

    def tick(self) -> list[Record]:
        """``tick_pending``, with the records built."""
        return self.records(self.tick_pending())

    def tick_pending(self) -> list[Output]:
        """Wall-clock housekeeping (the flush timer calls it): edges silent for idle_s go idle, which may
        let event time advance, or end the input, on partitions that get no messages any more."""
        now = self.clock()
        out: list[Output] = []
        for p, st in self.parts.items():
            gone = st.clocks.check_idle(now)
            if gone:
                self.counters["edges_idle"] += len(gone)
                log.warning("rstscope: partition %d: edge(s) %s silent for %g s: idle (not holding windows back)",
                            p, ", ".join(repr(g) for g in gone), st.clocks.idle_s)
            out += self._advance(st, now)  # also: the end of a partition's warm-up
        return out

    def ackable(self, partition: int) -> list[Any]:
        """Handles of the leading done messages of a partition, in offset order (removed from the queue)."""
        st = self.parts.get(partition)
        if st is None:
            return []
        q = st.queue
        out = []
        while q and q[0].holds == 0:
            out.append(q.popleft().handle)
        st.base += len(out)
        return out

    def held(self) -> int:
        return sum(len(st.queue) for st in self.parts.values())


def dead_letter(err: CodecError, topic: str, partition: int, offset: int, key: bytes | None,
                value: bytes | None) -> bytes:
    """A dead-letter message: why, where from, and the original bytes (hex, capped)."""
    raw = value or b""
    return dumps({"reason": err.reason, "error": str(err), "topic": topic, "partition": partition,
                  "offset": offset, "key": key.hex() if key else None, "value_hex": raw[:1024].hex(),
                  "value_len": len(raw)})


FLUSH_S = 0.2  # records reach the rollup input (and their packets are acked) at least this often
FLUSH_RECORDS = 1000  # ... or as soon as this many are waiting
BATCH_RECORDS = 500  # records per rollup-input message


def rollup_batches(pending: dict[int, list[bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) rollup-input messages: a JSON array of records of one bucket, keyed by the bucket."""
    for bucket, bodies in pending.items():
        for i in range(0, len(bodies), BATCH_RECORDS):
            yield b"%d" % bucket, b"[" + b",".join(bodies[i:i + BATCH_RECORDS]) + b"]"


def build(app: Any, stage: ConnectionStage, packets: Any, connections: Any, rollup_input: Any, dead_letters: Any,
          guard: OffsetGuard) -> Any:
    """Register the connection agent on a Faust app (manual acks, strictly in offset order).

    Each record goes to the connections topic (one message per record, keyed by id, for subscribers;
    produced as one batch per partition at each checkpoint) and, batched per bucket, to the rollup input
    (keyed by its bucket, for the rollup agent: one Faust event there per batch rather than per
    record). Messages are acked by the checkpoint (streams/checkpoint.py) after the records that
    depend on them were handed to the producer. Acks go to the consumer with an `AckRef`, so a held
    packet does not keep Faust's event alive."""
    bucket_s = stage.topology.window.size_s
    pending: dict[int, list[bytes]] = {}  # bucket -> record bodies not yet sent to the rollup input
    out = TopicBatches(connections.get_topic_name(), role_spec(stage.topology, "connections").partitions)

    waiting: list[Output] = []  # finished since the last checkpoint: classified together when it produces

    def emit(records: list[Record]) -> None:
        items = []
        for rec in records:
            body = dumps(rec)
            pending.setdefault(bucket_of(rec, bucket_s), []).append(body)
            items.append((rec["id"].encode(), body, int(rec["last_ts"] * 1000)))
        out.add_many(items)

    async def decide() -> None:
        waiting.extend(stage.tick_pending())

    async def send_records() -> Awaitable[None] | None:
        if waiting:
            emit(stage.records(waiting))
            waiting.clear()
        return out.handover(app)  # completed by the checkpoint, in the background

    async def send_rollup_input() -> None:
        for key, value in rollup_batches(pending):
            await rollup_input.send(key=key, value=value, force=True)
        pending.clear()

    def done() -> list[Any]:
        return [h for p in list(stage.parts) for h in stage.ackable(p)]

    cp = Checkpoint(app, "connections", stage.counters, decide=decide, produce=(send_records, send_rollup_input),
                    done=done, interval=FLUSH_S)

    async def connection_agent(stream: Any) -> None:
        async for event in stream.noack().events():
            msg = event.message
            if not await guard.admit(msg):
                continue
            p = msg.partition
            async with cp.lock:
                outputs, errors = stage.take(p, event.value, AckRef.of(msg))
                waiting.extend(outputs)
                for err in errors:
                    await dead_letters.send(key=None, value=dead_letter(err, msg.topic, p, msg.offset, msg.key,
                                                                         event.value), force=True)
            if len(waiting) + len(out) >= FLUSH_RECORDS:
                await cp.commit()

    return app.agent(packets, name="connections")(connection_agent)
