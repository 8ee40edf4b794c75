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

`ConnectionStage` is transport-free (bytes in, dicts out) so it can be benchmarked and unit-tested;
`build` wires it into a Faust app.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from typing import Any

from rstscope.codecs.errors import CodecError, MalformedRecord
from rstscope.codecs.jsonl import dumps
from rstscope.codecs.packet import EdgeGeo, Watermark, decode_with_geo
from rstscope.config import Topology
from rstscope.core.record import ConnectionRecord, make_record
from rstscope.core.table import ConnectionTable, Finished, Key
from rstscope.geo import GeoDB
from rstscope.packet import PacketRecord
from rstscope.streams.offsets import OffsetGuard, periodic
from rstscope.streams.rollup_agent import bucket_of

log = logging.getLogger(__name__)
# Event times outside this range are refused (dead letter): NaN/inf or absurd values would crash or
# poison the connection table; a message that crashes the worker is replayed after its restart, forever.
MAX_TS = 1e11  # year ~5100


class ProcessingError(CodecError):
    """A record that decoded but could not be processed (a bug, counted and dead-lettered, not a crash)."""

    reason = "processing_error"


class _Entry:
    """One consumed message waiting to be acked (once ``done`` is True)."""

    __slots__ = ("done", "handle")

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        # False: its connection still needs it; True: done; None: pinned (it opened its tuple's first
        # connection of a window that is still open: done when that window closes)
        self.done: bool | None = False


class PartitionState:
    """A partition's connection table and its not-yet-acked messages, in offset order."""

    def __init__(self, topology: Topology) -> None:
        self.table = ConnectionTable(topology.window)
        self.queue: deque[_Entry] = deque()
        self.pending: dict[Key, list[_Entry]] = {}  # open connection -> its messages
        self.pinned: dict[int, list[_Entry]] = {}  # window start -> its tuples' first openers
        self.window = self.table.current_window  # the table's current window when pins were last checked
        self.sources: dict[str, bool] = {}  # edge producer id -> has sent eof
        self.edge_geo: dict[Key, EdgeGeo] = {}  # open connection -> geolocation its edge attached

    def unpin(self, before: float) -> None:
        """Release the pins of the windows that start before ``before``: those windows are closed, so
        every connection of theirs was finalized (by the same advance of the table)."""
        for w in [w for w in self.pinned if w < before]:
            for e in self.pinned.pop(w):
                e.done = True
        self.window = self.table.current_window


class ConnectionStage:
    """Feed (partition, message bytes, ack handle); get records to emit and handles safe to ack."""

    def __init__(self, topology: Topology, geo: GeoDB | None = None) -> None:
        self.topology = topology
        self.geo = geo or GeoDB.empty()
        self.parts: dict[int, PartitionState] = {}
        self.counters: Counter[str] = Counter()

    def state(self, partition: int) -> PartitionState:
        st = self.parts.get(partition)
        if st is None:
            st = self.parts[partition] = PartitionState(self.topology)
        return st

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker lost: their unacked messages will be replayed by the new owner."""
        for p in partitions:
            st = self.parts.pop(p, None)
            if st is not None:
                self.counters["revoked_open"] += len(st.table.open)
                for k, v in st.table.counters.items():
                    self.counters[f"table:{k}"] += v

    def feed(self, partition: int, value: bytes | None,
             handle: Any) -> tuple[list[ConnectionRecord], CodecError | None]:
        """Process one message. Returns the finished (classified) records and a decode error, if any."""
        st = self.state(partition)
        entry = _Entry(handle)
        st.queue.append(entry)
        try:
            item, geo = decode_with_geo(value or b"")
            if not (math.isfinite(item.ts) and 0.0 <= item.ts < MAX_TS):
                raise MalformedRecord(f"timestamp {item.ts!r} out of range")
            return self._process(st, entry, item, geo), None
        except CodecError as e:
            entry.done = True
            self.counters[f"dead:{e.reason}"] += 1
            return [], e
        except Exception as e:  # never crash-loop the worker on one message: dead-letter it, count it
            entry.done = True
            self.counters["dead:processing_error"] += 1
            log.exception("rstscope: a record could not be processed (sent to the dead letters)")
            return [], ProcessingError(f"{type(e).__name__}: {e}")

    def _process(self, st: PartitionState, entry: _Entry, item: PacketRecord | Watermark,
                 geo: EdgeGeo | None = None) -> list[ConnectionRecord]:
        table = st.table
        if isinstance(item, Watermark):
            self.counters["watermarks"] += 1
            entry.done = True
            done = table.advance(item.ts)
            st.sources[item.source] = st.sources.get(item.source, False) or item.eof
            if item.eof and all(st.sources.values()):
                # every edge feeding this partition reached its end of input: the analyze rule applies,
                # what has not ended is judged at the cutoff min(window end, the end of input)
                done += table.close(item.ts)
                st.sources.clear()
                st.unpin(float("inf"))  # close() dropped every marker
            elif table.current_window != st.window:
                st.unpin(table.current_window)
            return self._finish(st, done)
        self.counters["packets"] += 1
        key = item.tuple_key
        window = int(item.ts // table.size) * table.size
        before = table.open.get(key) or table.closed.get(key)
        first = before is None or before.window_start != window  # the tuple has no state in this window
        done = table.add(item)
        if table.current_window != st.window:
            st.unpin(table.current_window)
        out = self._finish(st, done, (item, geo) if geo is not None else None)
        conn = table.open.get(key)
        if conn is not None and conn.packets and conn.packets[-1] is item:
            st.pending.setdefault(conn.key, []).append(entry)  # the table's key tuple: not a second copy
            if geo is not None:
                st.edge_geo[conn.key] = geo  # the edge hid the client address; it geolocated it first
        else:
            entry.done = True  # dropped by the table, or it completed its connection just now
        if first:
            after = conn or table.closed.get(key)
            if after is not None and after.window_start == window:  # it opened the tuple's first connection
                entry.done = None
                st.pinned.setdefault(window, []).append(entry)
        return out

    def _finish(self, st: PartitionState, done: list[Finished],
                last: tuple[PacketRecord, EdgeGeo] | None = None) -> list[ConnectionRecord]:
        """Records of the finalized connections; their messages are done. ``last``: the packet being
        processed and its edge geolocation (a connection it decides at once has no entry for it yet)."""
        out = []
        w = self.topology.window
        for f in done:
            for e in st.pending.pop(f.conn.key, ()):
                if e.done is False:  # a pinned one (None) waits for its window to close
                    e.done = True
            edge_geo = st.edge_geo.pop(f.conn.key, None)
            if edge_geo is None and last is not None and f.conn.packets and f.conn.packets[-1] is last[0]:
                edge_geo = last[1]
            if f.excluded:
                self.counters[f"excluded:{f.excluded}"] += 1
                continue
            if edge_geo is not None:
                country, asn, as_name = edge_geo.country, edge_geo.asn, ""
            else:
                g = self.geo.lookup(f.conn.key[0])
                country, asn, as_name = g.country, g.asn, g.as_name
            out.append(make_record(f.conn, w.max_packets, self.topology.evidence, w.mode, country, asn, as_name))
        self.counters["records"] += len(out)
        return out

    def ackable(self, partition: int) -> list[Any]:
        """Handles of the leading done messages of a partition, in offset order (removed from the queue)."""
        st = self.parts.get(partition)
        if st is None:
            return []
        q = st.queue
        out = []
        while q and q[0].done:
            out.append(q.popleft().handle)
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


class AckRef:
    """What a held packet needs for its ack, instead of Faust's event and message: a packet stays held
    while its connection is open, and an event with its message costs ~840 bytes (measured with 1M
    open connections, bench/bench_worker_live.py memory). `Consumer.ack` reads these fields and keeps
    a weak reference to what it acks."""

    __slots__ = ("__weakref__", "acked", "generation_id", "offset", "topic", "tp")

    def __init__(self, tp: Any, offset: int, topic: str, generation_id: int) -> None:
        self.tp = tp
        self.offset = offset
        self.topic = topic
        self.generation_id = generation_id
        self.acked = False


def build(app: Any, stage: ConnectionStage, packets: Any, connections: Any, rollup_input: Any, dead_letters: Any,
          guard: OffsetGuard) -> Any:
    """Register the connection agent on a Faust app (manual acks, strictly in offset order).

    Each record goes to the connections topic at once (one message, keyed by id, for subscribers) and,
    batched per bucket, to the rollup input (keyed by its bucket, for the rollup agent): one Faust
    event in the rollup agent per batch rather than per record. Messages are acked only by `flush`,
    after the batches holding their records were sent; a lock keeps a flush from running between a
    message's processing and its sends. Acks go to the consumer directly with an `AckRef`, so a held
    packet does not keep Faust's event alive."""
    bucket_s = stage.topology.window.size_s
    pending: dict[int, list[bytes]] = {}  # bucket -> record bodies not yet sent to the rollup input
    waiting = [0]  # number of records in pending
    lock = asyncio.Lock()

    async def flush() -> None:
        async with lock:
            # Under the lock the agent cannot process: every message that is done now has its records
            # in `pending`, so once these batches are sent its offset may be acked. Nothing is taken
            # out of `pending` or the ack queues before every send went out: if one raises, the next
            # flush sends them all again (the rollup drops the duplicates by id).
            for key, value in rollup_batches(pending):
                await rollup_input.send(key=key, value=value, force=True)
            pending.clear()
            waiting[0] = 0
            ready = [h for p in list(stage.parts) for h in stage.ackable(p)]
            # Faust flushes the producer before it commits, so these sends are durable before the
            # offsets acked below are.
            gen = app.consumer_generation_id
            consumer = app.consumer
            for ref in ready:
                if ref.generation_id == gen:
                    consumer.ack(ref)

    async def connection_agent(stream: Any) -> None:
        async for event in stream.noack().events():
            msg = event.message
            if not await guard.admit(msg):
                continue
            p = msg.partition
            async with lock:
                records, err = stage.feed(p, event.value, AckRef(msg.tp, msg.offset, msg.topic, msg.generation_id))
                for rec in records:
                    body = dumps(rec)
                    pending.setdefault(bucket_of(rec, bucket_s), []).append(body)
                    await connections.send(key=rec["id"].encode(), value=body, timestamp=rec["last_ts"],
                                           force=True)
                waiting[0] += len(records)
                if err is not None:
                    await dead_letters.send(key=None, value=dead_letter(err, msg.topic, p, msg.offset, msg.key,
                                                                         event.value), force=True)
            if waiting[0] >= FLUSH_RECORDS:
                await flush()

    periodic(app, FLUSH_S, stage.counters, "connections-flush")(flush)
    return app.agent(packets, name="connections")(connection_agent)
