"""Connections over event time (SPEC section 4): one rule per packet, one decision per connection.

A connection is a 5-tuple inside the 15-minute window of its SYN; its packets are that tuple's
client packets in that window from the SYN on, at most ``max_packets``. Its life has the three hooks
of nfstream's flows: ``open`` on a SYN, ``update`` on each later client packet, ``finalize`` when it
is decided.

* ``step`` is the rule for one packet on one tuple. The edge's gate (which keeps no packets), the
  connection table below and the batch engine's replay all call it, so they cannot disagree.
* ``exclusion`` is the rule for one finished connection: ended ones (RST, FIN, ``max_packets``) are
  always classified; the others wait for the cutoff (their window's end, or the end of a finite
  input): a timeout when their last packet lies ``timeout_s`` or more before it, else ``incomplete``.
  A connection with several SYNs is ``multi_syn``.

Membership depends on the tuple's own packets (their times, flags and sequence numbers); the
watermark (the largest packet time seen) decides *when* a decided connection is emitted: an ended one
once the watermark passes its last packet by ``grace_s``, the others when their window closes. All
packets of a tuple share a Kafka partition, so a per-partition watermark is enough for the streaming
workers, and for the same packets in time order they emit exactly what ``rstscope analyze`` does. When
timestamps go backwards by more than the gap a packet closes, the watermark may have emitted its
connection already: the packet is then counted (``after_close``), and which watermark saw it first
(the whole input's offline, one partition's in a worker) can decide that.
"""

from __future__ import annotations

import enum
import heapq
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from rstscope.config import MODE_IDLE, WindowParams
from rstscope.packet import TH_ACK, TH_FIN, TH_RST, TH_SYN, PacketRecord, pack_key, unpack_key

Key = tuple[bytes, int, bytes, int]

# Why a connection was finalized (its "end").
END_MAX_PACKETS = "max_packets"  # its Nth packet: decided at once
END_GRACE = "grace"  # ended (RST/FIN) and the grace period after its last packet passed
END_REUSED = "reused"  # ended, and a SYN with a new sequence number opened the tuple's next connection
END_IDLE = "idle"  # idle mode: quiet for idle_s (a timeout)
END_WINDOW = "window_closed"  # its window closed: the cutoff is the window's end
END_INPUT = "end_of_input"  # a finite input ended: the cutoff is the input's last frame (or the window's end)

# Exclusions (connections that are not classified).
EXCL_MULTI_SYN = "multi_syn"
EXCL_INCOMPLETE = "incomplete"
EXCLUSIONS = (EXCL_MULTI_SYN, EXCL_INCOMPLETE)

# Packet counters of the rule (packets that change nothing).
NO_SYN = "no_syn"  # no connection of its tuple in its window
AFTER_CLOSE = "after_close"  # its connection ended (RST/FIN) and was decided already
BEYOND_MAX = "beyond_max_packets"  # its connection had its max_packets already
AFTER_IDLE = "after_idle"  # idle mode: its connection was decided as a timeout already
LATE = "late"  # its window was closed already


def is_syn(flags: Any) -> Any:
    """A connection-opening SYN: SYN set, ACK and RST clear (ints or numpy arrays)."""
    return flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN


def ends(flags: Any) -> Any:
    """The packet ends its connection: an RST or a FIN (ints or numpy arrays)."""
    return flags & (TH_RST | TH_FIN) != 0


def window_of(ts: Any, size: int) -> Any:
    """Start of the tumbling window holding ``ts`` (floats or numpy arrays)."""
    return (ts // size) * size


def timed_out(last_ts: Any, cutoff: Any, params: WindowParams) -> Any:
    """A connection that did not end: a timeout (else incomplete) when it was quiet long enough before the cutoff."""
    return cutoff - last_ts >= params.timeout_s


class Step(enum.IntEnum):
    """What one packet does to its tuple (``step``)."""

    OPEN = 0  # it opens a new connection (nothing to finish first)
    JOIN = 1  # it joins the tuple's connection
    FINISH_OPEN = 2  # the connection is finished (``end``), then the packet opens the next one
    FINISH_DROP = 3  # the connection is finished (``end``), then the packet changes nothing (``counter``)
    DROP = 4  # the packet changes nothing (``counter``)


class Outcome(NamedTuple):
    step: Step
    end: str = ""  # why the tuple's connection is finished (FINISH_*)
    counter: str = ""  # what the dropped packet is counted as (*_DROP)


# The steps as module names for the per-packet code: ``Step.OPEN`` is a class attribute lookup on the
# enum (~70 ns in Python 3.11), a module global ~10 ns; the gate and the table test several per packet.
STEP_OPEN, STEP_JOIN, STEP_FINISH_OPEN, STEP_FINISH_DROP, STEP_DROP = Step
_OPEN = Outcome(Step.OPEN)
_JOIN = Outcome(Step.JOIN)
_NO_SYN = Outcome(Step.DROP, counter=NO_SYN)
_SEALED_COUNTER = {END_MAX_PACKETS: BEYOND_MAX, END_IDLE: AFTER_IDLE}


class TupleState(Protocol):
    """What ``step`` reads of a tuple: its connection, open or already decided (sealed)."""

    window_start: int
    syn_seq: int
    last_ts: float
    ended: bool  # an RST or a FIN was seen
    sealed: str  # "" while it takes packets; else the end that decided it


def step(st: TupleState | None, ts: float, flags: int, seq: int, window: int, params: WindowParams) -> Outcome:
    """SPEC 4 for one client packet of a tuple whose connection (if any) is ``st``.

    - No connection in the packet's window: a SYN opens one; anything else is ``no_syn``.
    - A connection that has not ended takes every packet, SYNs included (a retransmission, or a new
      sequence number: it then has several SYNs and is ``multi_syn``).
    - An ended one (RST or FIN seen) takes packets for ``grace_s`` after its last one; a SYN with a
      new sequence number finishes it and opens the next connection (clients reuse ports).
    - A decided one counts later packets; a SYN with a new sequence number opens the next connection.
    - Idle mode: a connection that has not ended and was quiet for ``idle_s`` is decided (a timeout).
    """
    syn = is_syn(flags)
    if st is None or st.window_start != window:
        return _OPEN if syn else _NO_SYN
    new_isn = syn and seq != st.syn_seq
    if st.sealed:
        return _OPEN if new_isn else Outcome(Step.DROP, counter=_SEALED_COUNTER.get(st.sealed, AFTER_CLOSE))
    if st.ended:
        if ts - st.last_ts >= params.grace_s:
            return Outcome(Step.FINISH_OPEN, END_GRACE) if new_isn else Outcome(
                Step.FINISH_DROP, END_GRACE, AFTER_CLOSE)
        return Outcome(Step.FINISH_OPEN, END_REUSED) if new_isn else _JOIN
    if params.mode == MODE_IDLE and ts - st.last_ts >= params.idle_s:
        return Outcome(Step.FINISH_OPEN, END_IDLE) if new_isn else Outcome(Step.FINISH_DROP, END_IDLE, AFTER_IDLE)
    return _JOIN


@dataclass(slots=True)
class Track:
    """What the gate keeps of a tuple's connection (no packets): what ``step`` reads, and a count."""

    window_start: int
    syn_seq: int
    last_ts: float
    count: int = 1
    ended: bool = False
    sealed: str = ""


def track(st: Track | None, ts: float, flags: int, seq: int, window: int,
          params: WindowParams) -> tuple[Outcome, Track | None]:
    """``step`` for a tuple kept as a ``Track``: the outcome, and the tuple's state after it."""
    o = step(st, ts, flags, seq, window, params)
    s = o.step
    if s is STEP_OPEN or s is STEP_FINISH_OPEN:
        return o, opened(ts, flags, seq, window)
    assert st is not None or s is STEP_DROP
    if s is STEP_JOIN and st is not None:
        joined(st, 1, ts, bool(ends(flags)), params)
    elif s is STEP_FINISH_DROP and st is not None:
        st.sealed = o.end
    return o, st


def opened(ts: float, flags: int, seq: int, window: int) -> Track:
    """The ``Track`` of a connection its SYN (at ``ts``, with ``flags``, ``seq``) just opened."""
    return Track(window, seq, ts, 1, bool(flags & TH_FIN))  # a SYN+FIN has ended already


def joined(st: Track, packets: int, last_ts: float, ended: bool, params: WindowParams) -> None:
    """``st`` after ``packets`` more packets joined it (``step``: JOIN, never past ``max_packets``), the
    latest of them at ``last_ts``; ``ended``: one of them was an RST or a FIN."""
    st.count += packets
    if last_ts > st.last_ts:
        st.last_ts = last_ts
    if ended:
        st.ended = True
    if st.count >= params.max_packets:
        st.sealed = END_MAX_PACKETS


def plain_join(gap: Any, ended: Any, params: WindowParams) -> Any:
    """``step``'s JOIN for a packet without a SYN of a connection that is open and not sealed (scalars
    or numpy columns): ``gap`` is its time after the connection's latest packet, ``ended`` whether the
    connection had ended (RST or FIN) before it. Otherwise ``step`` finishes the connection: grace_s
    passed since it ended or, in idle mode, idle_s since it was last heard from."""
    quiet = params.idle_s if params.mode == MODE_IDLE else float("inf")
    return ((gap < params.grace_s) & ended) | ((gap < quiet) & (ended ^ True))


def ended_reopens(same_window: Any, sealed: Any, new_isn: Any) -> Any:
    """``step``'s FINISH_OPEN for a packet of a tuple whose connection has ended (RST or FIN): in that
    connection's window, while it is not sealed, a SYN with a new sequence number (``new_isn``)
    finishes it and opens the next, whether its grace period passed or not (scalars or numpy columns)."""
    return same_window & (sealed ^ True) & new_isn


# Exclusion codes (for columns of connections): 0 classified, else 1 + index in EXCLUSIONS.
X_NONE, X_MULTI_SYN, X_INCOMPLETE = 0, 1, 2


def exclusion_code(syns: Any, decided: Any, last_ts: Any, cutoff: Any, params: WindowParams) -> Any:
    """Why a finished connection is not classified (X_*), for one connection or numpy columns.

    ``decided``: it ended (RST, FIN, max_packets) or idle mode timed it out; otherwise it is judged at
    ``cutoff``. A connection with several SYNs is multi_syn whether it ended or not.
    """
    multi = syns > 1
    judged = decided | timed_out(last_ts, cutoff, params)
    return multi * X_MULTI_SYN + (1 - multi) * (1 - judged) * X_INCOMPLETE


def exclusion(syns: int, decided: bool, last_ts: float, cutoff: float, params: WindowParams) -> str | None:
    """``exclusion_code`` for one connection, as the exclusion's name (or None)."""
    code = exclusion_code(syns, decided, last_ts, cutoff, params)
    return EXCLUSIONS[code - 1] if code else None


# One packet of a held connection, packed, as (name, struct format) in row order: the struct below
# and the batch classifier's numpy dtype (fastpath.verdicts) are both made from this one table.
ROW_FIELDS = (
    ("ts", "d"),
    ("flags", "B"),
    ("seq", "I"),
    ("ack", "I"),
    ("ipid", "i"),  # -1: none (IPv6)
    ("ttl", "B"),
    ("window", "H"),
    ("payload_len", "I"),
    ("opt_len", "B"),
    ("ref", "q"),  # the shell's ref (the streaming worker: which message carried it)
)
_ROW = struct.Struct("<" + "".join(fmt for _, fmt in ROW_FIELDS))
ROW_SIZE = _ROW.size


class Connection:
    """The client-to-server packets of one connection (at most max_packets of them).

    A busy worker holds a million of these (SPEC 4 holds a connection that has not ended until its
    window closes), so they are compact: the key is one packed bytes object (``rstscope.packet.pack_key``)
    and the packets are fixed-size rows in one bytes object; ``key`` and ``packets`` rebuild the usual
    tuple and records when the connection is classified. Each row carries an int ``ref`` the shell
    chose (the worker acks a message once no held connection refers to it)."""

    __slots__ = ("body", "ended", "first_ts", "last_ts", "meta", "pkey", "sealed", "syn_seq", "syns",
                 "window_start")

    def __init__(self, key: Key | bytes, window_start: int, syn_seq: int, first_ts: float, last_ts: float,
                 packets: Iterable[PacketRecord] = (), syns: int = 1, ended: bool = False, sealed: str = "",
                 refs: Iterable[int] | None = None) -> None:
        self.pkey = key if isinstance(key, bytes) else pack_key(*key)
        self.window_start = window_start
        self.syn_seq = syn_seq
        self.first_ts = first_ts
        self.last_ts = last_ts
        self.syns = syns  # SYN packets among them (more than one: multi_syn)
        self.ended = ended  # an RST or a FIN was seen
        self.sealed = sealed  # "" while open; the end that decided it
        self.meta: Any = None  # what the shell attached (the worker: the edge's geolocation of the client)
        pkts = list(packets)
        refs = [0] * len(pkts) if refs is None else list(refs)
        self.body = b"".join(_row(p, r) for p, r in zip(pkts, refs, strict=True))

    @property
    def key(self) -> Key:
        """(client ip, client port, server ip, server port)."""
        return unpack_key(self.pkey)

    @property
    def count(self) -> int:
        """How many packets it holds."""
        return len(self.body) // _ROW.size

    @property
    def packets(self) -> list[PacketRecord]:
        """Its packets as records, in the order they were added."""
        return self.records(unpack_key(self.pkey))

    def records(self, key: Key) -> list[PacketRecord]:
        """``packets``, given its ``key`` (a caller that needs both unpacks the key once)."""
        src, sport, dst, dport = key
        version = 4 if len(src) == 4 else 6
        new = tuple.__new__  # PacketRecord(...) without the namedtuple's argument handling: a worker's hot path
        return [new(PacketRecord, (ts, version, src, dst, sport, dport, flags, seq, ack,
                                   None if ipid < 0 else ipid, ttl, win, plen, olen))
                for ts, flags, seq, ack, ipid, ttl, win, plen, olen, _ref in _ROW.iter_unpack(self.body)]

    @property
    def refs(self) -> list[int]:
        """The shell's ref of each packet (``ConnectionTable.add``)."""
        return [row[-1] for row in _ROW.iter_unpack(self.body)]

    def append(self, pkt: PacketRecord, ref: int = 0) -> None:
        self.body += _row(pkt, ref)

    def __repr__(self) -> str:
        return (f"Connection({self.key!r}, window_start={self.window_start}, syn_seq={self.syn_seq}, "
                f"packets={self.count}, syns={self.syns}, ended={self.ended}, sealed={self.sealed!r})")


def _row(p: PacketRecord, ref: int) -> bytes:
    return _ROW.pack(p.ts, p.flags, p.seq, p.ack, -1 if p.ipid is None else p.ipid, p.ttl, p.window,
                     p.payload_len, p.opt_len, ref)


@dataclass(slots=True)
class Marker:
    """What the table keeps of a decided connection until its window closes: enough to count its
    later packets and to recognise a SYN that opens the tuple's next connection."""

    window_start: int
    syn_seq: int
    sealed: str
    last_ts: float = 0.0
    ended: bool = True


@dataclass(frozen=True, slots=True)
class Finished:
    """A finalized connection, with why it ended and, if it is not to be classified, why not."""

    conn: Connection
    end: str
    excluded: str | None


class ConnectionTable:
    """Connections keyed by 5-tuple, decided by ``step`` and emitted as event time advances.

    Counters: packets no_syn, after_close, beyond_max_packets, after_idle, late; connections
    multi_syn, incomplete. ``open`` holds connections that can still take packets (the streaming
    worker holds their messages unacked), ``closed`` the markers of decided ones in open windows.
    """

    def __init__(self, params: WindowParams, auto_advance: bool = True) -> None:
        self.params = params
        # True: event time is the largest packet time added (one input, `rstscope analyze`); False: the
        # caller moves it with `advance` (a worker: the slowest of the edges feeding its partition)
        self.auto_advance = auto_advance
        self.size = params.size_s
        self.max_packets = params.max_packets
        self.idle_mode = params.mode == MODE_IDLE
        self.open: dict[bytes, Connection] = {}  # keyed by packed 4-tuple (``pack_key``)
        self.closed: dict[bytes, Marker] = {}
        self.last: Connection | None = None  # the connection the last added packet joined or opened
        self.fresh = False  # ... and its tuple had no state (connection or marker) in its window before it
        self.counters: Counter[str] = Counter()
        self.watermark = float("-inf")
        self.current_window = -1  # windows before this one are closed
        self._due: list[tuple[float, int, Connection]] = []  # (emit at, tiebreak, conn)
        self._tiebreak = 0
        # below this event time, advance() only moves the watermark: nothing is due and the window is
        # the same (a worker advances per packet, and almost every advance is one of these)
        self.quiet_until = float("-inf")

    # -- the three hooks -------------------------------------------------------------------------

    def _open(self, key: bytes, pkt: PacketRecord, window: int, ref: int) -> Connection:
        # a SYN+FIN (a scanner's probe) has ended already
        conn = Connection(key, window, pkt.seq, pkt.ts, pkt.ts, ended=bool(pkt.flags & TH_FIN))
        conn.append(pkt, ref)
        self.open[key] = conn
        self.closed.pop(key, None)
        if conn.ended:
            self._schedule(conn, pkt.ts + self.params.grace_s)
        elif self.idle_mode:
            self._schedule(conn, pkt.ts + self.params.idle_s)
        return conn

    def _update(self, conn: Connection, pkt: PacketRecord, ref: int) -> None:
        conn.append(pkt, ref)
        if pkt.ts > conn.last_ts:
            conn.last_ts = pkt.ts
        if pkt.ts < conn.first_ts:
            conn.first_ts = pkt.ts
        flags = pkt.flags
        if ends(flags):
            conn.ended = True
        if is_syn(flags):
            conn.syns += 1  # a SYN+FIN is a SYN too
        if conn.ended:
            self._schedule(conn, conn.last_ts + self.params.grace_s)
        elif self.idle_mode:
            self._schedule(conn, conn.last_ts + self.params.idle_s)

    def _finalize(self, conn: Connection, end: str, cutoff: float = float("inf")) -> Finished:
        del self.open[conn.pkey]
        decided = conn.ended or end in (END_MAX_PACKETS, END_IDLE)
        excluded = exclusion(conn.syns, decided, conn.last_ts, cutoff, self.params)
        if excluded:
            self.counters[excluded] += 1
        conn.sealed = end
        if end not in (END_WINDOW, END_INPUT):
            self.closed[conn.pkey] = Marker(conn.window_start, conn.syn_seq, end)
        return Finished(conn, end, excluded)

    def _schedule(self, conn: Connection, at: float) -> None:
        self._tiebreak += 1
        heapq.heappush(self._due, (at, self._tiebreak, conn))
        if at < self.quiet_until:
            self.quiet_until = at

    def _quiet(self) -> None:
        """Recompute ``quiet_until``: the next entry due, or the end of the current window."""
        end = self.current_window + self.size if self.current_window >= 0 else float("-inf")
        self.quiet_until = min(self._due[0][0], end) if self._due else end

    # -- input -----------------------------------------------------------------------------------

    def add(self, pkt: PacketRecord, ref: int = 0, key: bytes | None = None,
            window: int | None = None) -> list[Finished]:
        """Feed one client-to-server packet; returns the connections this finalized. ``ref`` is kept
        with the packet (``Connection.refs``); ``last`` says which connection took it (None: none).
        ``key``: the packet's ``packed_key``, and ``window`` its ``window_of``, if the caller has them."""
        out: list[Finished] = []
        self.last = None
        if pkt.ts > self.watermark and self.auto_advance:
            out = self.advance(pkt.ts)
        ts = pkt.ts
        if window is None:
            window = int(window_of(ts, self.size))
        if window < self.current_window:
            self.counters[LATE] += 1
            return out
        if key is None:
            key = pkt.packed_key
        conn = self.open.get(key)
        st: Connection | Marker | None = conn if conn is not None else self.closed.get(key)
        self.fresh = st is None or st.window_start != window
        o = step(st, ts, pkt.flags, pkt.seq, window, self.params)
        s = o.step
        if s is STEP_JOIN:
            assert conn is not None
            self._update(conn, pkt, ref)
            self.last = conn
            if conn.count >= self.max_packets:
                out.append(self._finalize(conn, END_MAX_PACKETS))
            return out
        if s is STEP_OPEN:
            if conn is not None:  # an open connection of an older window (late close): decide it first
                out.append(self._finalize(conn, END_WINDOW, conn.window_start + self.size))
            self.last = self._open(key, pkt, window, ref)
            return out
        if s is STEP_FINISH_OPEN or s is STEP_FINISH_DROP:
            assert conn is not None
            out.append(self._finalize(conn, o.end))
            if s is STEP_FINISH_OPEN:
                self.last = self._open(key, pkt, window, ref)
                return out
        self.counters[o.counter] += 1
        return out

    def advance(self, watermark: float) -> list[Finished]:
        """Move event time forward: emit ended connections whose grace passed (idle mode: quiet
        ones), and decide every connection of a window that closed."""
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        if watermark < self.quiet_until:
            return []
        out = self._emit_due(watermark)
        current = int(window_of(watermark, self.size))
        if current > self.current_window:
            self.current_window = current
            out.extend(self._close_windows(current, END_WINDOW, float("inf")))
        self._quiet()
        return out

    def _emit_due(self, watermark: float) -> list[Finished]:
        """Emit what the watermark decided: ended connections past their grace, idle ones (idle mode)."""
        out: list[Finished] = []
        due = self._due
        open_ = self.open
        while due and due[0][0] <= watermark:
            _at, _n, conn = heapq.heappop(due)
            if open_.get(conn.pkey) is not conn:
                continue  # decided already
            if conn.ended:
                if conn.last_ts + self.params.grace_s <= watermark:
                    out.append(self._finalize(conn, END_GRACE))
            elif self.idle_mode and conn.last_ts + self.params.idle_s <= min(watermark, conn.window_start + self.size):
                out.append(self._finalize(conn, END_IDLE))  # quiet long enough before its window's end
        return out

    def _close_windows(self, before: int, end: str, end_ts: float) -> list[Finished]:
        """Decide every open connection of the windows before ``before``; drop their markers."""
        out = []
        size = self.size
        for conn in [c for c in self.open.values() if c.window_start < before]:
            out.append(self._finalize(conn, end, min(conn.window_start + size, end_ts)))
        stale = [k for k, m in self.closed.items() if m.window_start < before]
        for k in stale:
            del self.closed[k]
        if not self.open:
            self._due.clear()
        return out

    def close(self, end_ts: float = float("inf")) -> list[Finished]:
        """End of a finite input whose last frame (of any kind) was at ``end_ts``: decide everything.

        Ended connections are classified; the others are judged at the cutoff min(window end, end_ts).
        """
        out = self.advance(end_ts) if end_ts != float("inf") else []
        # what became due before the input ended (also entries scheduled behind the watermark)
        out.extend(self._emit_due(max(end_ts, self.watermark) if end_ts != float("inf") else self.watermark))
        out.extend(self._close_windows(2**62, END_INPUT, end_ts))
        self._due.clear()
        self.closed.clear()
        self._quiet()
        return out

    def feed(self, packets: Iterable[PacketRecord], end_ts: float | None = None) -> list[Finished]:
        """Add many packets and close: the whole life of a finite input (ending at its last packet
        unless ``end_ts`` says when the input ended)."""
        out: list[Finished] = []
        last = float("-inf")
        for p in packets:
            out.extend(self.add(p))
            last = max(last, p.ts)
        out.extend(self.close(end_ts if end_ts is not None else last))
        return out
