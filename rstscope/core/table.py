"""The connection table over event time: open, update, finalize; advanced by a watermark.

A flow's life has three hooks, as in nfstream: ``open`` on a SYN, ``update`` on each later client
packet, ``finalize`` when it ends. It ends when it has its first ``max_packets`` packets, when it has
been idle for ``idle_timeout_s`` of event time, when its tuple is reused with a new SYN, when its
15-minute window closes, or at the end of the input. The last two, and any connection whose last
packet lies within ``cutoff_margin_s`` of its window's cutoff, are *incomplete*: we cannot tell how
they ended. The watermark is the largest packet time seen; all packets of one connection share a
Kafka partition, so a per-partition watermark is enough for the streaming workers.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from rstscope.config import WindowParams
from rstscope.packet import TH_ACK, TH_FIN, TH_RST, TH_SYN, PacketRecord

Key = tuple[bytes, int, bytes, int]

# Why a connection was finalized.
END_MAX_PACKETS = "max_packets"
END_IDLE = "idle"
END_REUSED = "reused"  # a new SYN on a tuple whose connection had ended (RST or FIN)
END_SUPERSEDED = "superseded"  # a new SYN while the old connection had not ended
END_WINDOW = "window_closed"
END_INPUT = "end_of_input"

# Exclusions (connections that are not classified).
EXCL_MULTI_SYN = "multi_syn"
EXCL_INCOMPLETE = "incomplete"
EXCL_SUPERSEDED = "superseded"


@dataclass(slots=True)
class Connection:
    """The client-to-server packets of one connection (at most max_packets of them)."""

    key: Key
    window_start: int
    syn_seq: int
    first_ts: float
    last_ts: float
    packets: list[PacketRecord] = field(default_factory=list)
    syn_retransmits: int = 0
    ended: bool = False  # a RST or FIN was seen


@dataclass(frozen=True, slots=True)
class Finished:
    """A finalized connection, with why it ended and, if it is not to be classified, why not."""

    conn: Connection
    end: str
    excluded: str | None


class ConnectionTable:
    """Connections keyed by 5-tuple, finalized as event time advances.

    Counters: no_syn, after_close, late (packets), and the exclusions multi_syn, incomplete,
    superseded (connections). Finalized connections are returned; the table keeps nothing of them
    but a small marker that absorbs their later packets until they go idle.
    """

    def __init__(self, params: WindowParams) -> None:
        self.size = params.size_s
        self.idle = float(params.idle_timeout_s)
        self.margin = float(params.cutoff_margin_s)
        self.max_packets = params.max_packets
        self.open: OrderedDict[Key, Connection] = OrderedDict()  # by last activity
        self.closed: OrderedDict[Key, tuple[int, float]] = OrderedDict()  # key -> (syn_seq, last_ts)
        self.counters: Counter[str] = Counter()
        self.watermark = float("-inf")
        self.oldest_window = -1  # windows before this one are closed

    # -- the three hooks -------------------------------------------------------------------------

    def _open(self, pkt: PacketRecord, window: int) -> Connection:
        conn = Connection(pkt.tuple_key, window, pkt.seq, pkt.ts, pkt.ts, [pkt])
        self.open[conn.key] = conn
        self.closed.pop(conn.key, None)
        return conn

    def _update(self, conn: Connection, pkt: PacketRecord) -> None:
        conn.packets.append(pkt)
        if pkt.ts > conn.last_ts:
            conn.last_ts = pkt.ts
        if pkt.ts < conn.first_ts:
            conn.first_ts = pkt.ts
        flags = pkt.flags
        if flags & (TH_RST | TH_FIN):
            conn.ended = True
        elif flags & (TH_SYN | TH_ACK) == TH_SYN and pkt.seq == conn.syn_seq:
            conn.syn_retransmits += 1
        self.open.move_to_end(conn.key)

    def _finalize(self, conn: Connection, end: str) -> Finished:
        del self.open[conn.key]
        excluded: str | None = None
        if end in (END_WINDOW, END_INPUT):
            excluded = EXCL_INCOMPLETE
        elif end == END_SUPERSEDED:
            excluded = EXCL_SUPERSEDED
        elif end == END_IDLE and conn.last_ts >= conn.window_start + self.size - self.margin:
            excluded = EXCL_INCOMPLETE  # too close to the cutoff to know how it ended
        elif conn.syn_retransmits:
            excluded = EXCL_MULTI_SYN
        if excluded:
            self.counters[excluded] += 1
        if end == END_MAX_PACKETS:  # its later packets are absorbed, not counted as no_syn
            self.closed[conn.key] = (conn.syn_seq, conn.last_ts)
            self.closed.move_to_end(conn.key)
        return Finished(conn, end, excluded)

    # -- input -----------------------------------------------------------------------------------

    def add(self, pkt: PacketRecord) -> list[Finished]:
        """Feed one client-to-server packet; returns the connections this finalized."""
        out: list[Finished] = []
        if pkt.ts > self.watermark:
            out = self.advance(pkt.ts)
        window = int(pkt.ts // self.size) * self.size
        if window < self.oldest_window:
            self.counters["late"] += 1
            return out
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        is_syn = pkt.flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN
        conn = self.open.get(key)
        if conn is not None:
            if conn.window_start != window:
                out.append(self._finalize(conn, END_WINDOW))
                conn = None
            elif pkt.ts - conn.last_ts >= self.idle:
                out.append(self._finalize(conn, END_IDLE))
                self.closed.pop(key, None)
                conn = None
        if conn is not None:
            if is_syn and pkt.seq != conn.syn_seq:
                out.append(self._finalize(conn, END_REUSED if conn.ended else END_SUPERSEDED))
                self._open(pkt, window)
                return out
            self._update(conn, pkt)
            if len(conn.packets) >= self.max_packets:
                out.append(self._finalize(conn, END_MAX_PACKETS))
            return out
        marker = self.closed.get(key)
        if marker is not None and pkt.ts - marker[1] >= self.idle:
            del self.closed[key]
            marker = None
        if is_syn and (marker is None or marker[0] != pkt.seq):
            self._open(pkt, window)
        elif marker is not None:
            self.counters["after_close"] += 1
            self.closed[key] = (marker[0], max(marker[1], pkt.ts))
            self.closed.move_to_end(key)
        else:
            self.counters["no_syn"] += 1
        return out

    def advance(self, watermark: float) -> list[Finished]:
        """Move event time forward: finalize idle connections and close past windows."""
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        out: list[Finished] = []
        limit = watermark - self.idle
        open_ = self.open
        while open_:
            conn = next(iter(open_.values()))
            if conn.last_ts > limit:
                break
            out.append(self._finalize(conn, END_IDLE))
        closed = self.closed
        while closed:
            key, (_seq, last) = next(iter(closed.items()))
            if last > limit:
                break
            del closed[key]
        current = int(watermark // self.size) * self.size
        if current > self.oldest_window:
            if self.oldest_window >= 0:
                stale = [c for c in open_.values() if c.window_start < current]
                out.extend(self._finalize(c, END_WINDOW) for c in stale)
            self.oldest_window = current
        return out

    def close(self) -> list[Finished]:
        """End of input: what has idled out is decided; everything still open is incomplete."""
        out = [self._finalize(c, END_INPUT) for c in list(self.open.values())]
        self.closed.clear()
        return out

    def feed(self, packets: Iterable[PacketRecord]) -> list[Finished]:
        """Add many packets and close: the whole life of a finite input."""
        out: list[Finished] = []
        for p in packets:
            out.extend(self.add(p))
        out.extend(self.close())
        return out
