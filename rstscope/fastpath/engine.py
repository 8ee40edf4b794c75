"""The batch engine: the gate, the connection table and classification over columns of packets.

It computes what ``Gate.admit`` + ``ConnectionTable.add`` + ``make_record`` compute packet by packet
(the reference, which the streaming workers run) by reorganising the work, never by restating a rule:
every decision calls the core's rule functions and constants (``core.table``: ``is_syn``, ``ends``,
``window_of``, ``track``, ``exclusion_code``; ``core.classify``'s stage, timeout and scanner rules
through ``fastpath.verdicts``; ``core.record.build_record``, ``make_record``), which accept numpy
columns as well as scalars.

The input is processed in time slices (``SLICE_FRAMES`` frames each, ``fastpath.reader.SliceReader``),
so memory does not grow with the input: a slice carries over to the next only what it cannot decide,
one state per tuple that a later packet can still meet (``_States``):

* a connection that can still take packets (not ended and its window open, or ended and the table's
  watermark not yet past its grace period): its packets (``_Arena``) and the table's watermark after
  the latest of them;
* a tuple whose latest connection is decided but whose window is still open: the gate's ``Track``
  (a later SYN with its sequence number is absorbed; a packet without a connection may be the
  server's answer to it).

Only the states that the slice's packets meet enter its work (their packets, or a virtual SYN that
stands for a decided state), ahead of the slice's packets; the others are only checked for what the
table emits. Membership in a connection depends only on the tuple's own packets (core.table), so the
work of a slice is grouped by tuple:

1. direction of every TCP packet (configured addresses/ports, or SYN-ACK -> server-to-client);
2. the packets that reach the gate sorted by tuple (a 64-bit hash of it, collisions detected; stable:
   input order within a tuple); sampling per tuple (the keyed hash, once per endpoint pair);
3. segments: within a tuple and window, a SYN whose sequence number differs from the previous SYN's
   starts a segment. When each such SYN comes after its previous connection ended (the common
   case: ports reused after a FIN or RST) and no connection pauses past the grace period (idle mode:
   the idle time), a segment is exactly one connection holding its first ``max_packets`` packets;
   the tuples where that does not hold are replayed packet by packet through ``core.table.track``
   (from their carried state);
4. packets without a connection are server-to-client when direction is learnt and the reverse
   tuple opened a connection in the same window (a search, and the carried states);
5. a connection is decided in the slice where the per-packet table emits it (its ``max_packets``-th
   packet, the packet after it, the watermark past its grace period, its window closing, the end of
   the input); then it is classified (``exclusion_code`` at the cutoff min(window end, end of input);
   by column reductions and the core's rules, ``fastpath.verdicts``: those with three RST+ACKs or
   more by the reference ``make_record``) and counted per (window, client address, verdict).

Because a connection is decided exactly when the table emits it, the records a run has delivered
after a slice are those the per-packet path delivers by that slice's last frame. When a slice finds
what only the per-packet path can answer (a late packet, a negative time, or time going backwards so
far that the table would have emitted a connection before a packet that joins it), ``run`` returns
how many frames' records are out, and the caller runs the per-packet path without delivering those.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rstscope.capture.files import compression
from rstscope.config import MODE_IDLE
from rstscope.core.classify import Verdict, scanner_code
from rstscope.core.record import ConnectionRecord, build_record, make_record
from rstscope.core.table import (
    END_GRACE,
    END_IDLE,
    END_MAX_PACKETS,
    EXCLUSIONS,
    NO_SYN,
    X_NONE,
    Connection,
    Step,
    Track,
    ended_reopens,
    ends,
    exclusion_code,
    is_syn,
    plain_join,
    track,
    window_of,
)
from rstscope.direction import OTHER, S2C
from rstscope.fastpath.reader import (
    DTYPES,
    AddressTable,
    Columns,
    SliceReader,
    empty_columns,
    join_columns,
)
from rstscope.fastpath.runs import before, count_before, cummax_runs, reduce_runs, runs_index
from rstscope.fastpath.verdicts import Rows, in_columns, plain_codes, reset_verdicts, verdict
from rstscope.geo import GeoInfo
from rstscope.packet import TH_RST, TH_SYN

if TYPE_CHECKING:
    from rstscope.offline import Analyzer, Progress

I8 = npt.NDArray[np.int64]
F8 = npt.NDArray[np.float64]
B1 = npt.NDArray[np.bool_]
SEALED = ("", END_MAX_PACKETS, END_GRACE, END_IDLE)  # Track.sealed values, as codes in the carried states

# Frames per slice (RSTSCOPE_SLICE_FRAMES overrides it; the tests use tiny slices). The engine's peak is
# ~300 bytes per frame of a slice, plus what is carried (the packets of open connections, one small state
# per tuple of the open windows: bounded by the traffic of a window, not by the input). 2^17 keeps
# `rstscope analyze` near 95 MiB on the bench capture, and is also the fastest there (docs/performance.md).
SLICE_FRAMES = 1 << 17


_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0xBF58476D1CE4E5B9)


def _tuple_hash(src: I8, dst: I8, seed: int) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of ordered endpoint pairs: one sort key per tuple (callers detect collisions)."""
    h = src.astype(np.uint64) * _M1
    h ^= (dst.astype(np.uint64) + np.uint64(seed)) * _M2
    h ^= h >> np.uint64(31)
    h *= _M3
    h ^= h >> np.uint64(29)
    return h


class _Fallback(Exception):
    """The batch engine cannot prove its answer equal to the per-packet path's: use that path."""


_STATE_FIELDS = ("src", "dst", "win", "seq", "last", "count", "ended", "sealed", "open", "wm", "row0")


def _zeros(dtype: Any) -> Any:
    return np.zeros(0, dtype=dtype)


@dataclass
class _States:
    """One per tuple that a later packet can still meet: its latest connection's ``Track`` (the gate's
    state). ``open``: that connection can still take packets; its packets are carried (rows ``row0`` on,
    ``count`` of them) and ``wm`` is the table's watermark right after the latest of them was added.
    Otherwise the table has emitted it, and the state lives until the gate closes its window."""

    src: I8 = field(default_factory=lambda: _zeros(np.int64))  # endpoints: address id << 16 | port
    dst: I8 = field(default_factory=lambda: _zeros(np.int64))
    win: I8 = field(default_factory=lambda: _zeros(np.int64))
    seq: I8 = field(default_factory=lambda: _zeros(np.int64))
    last: F8 = field(default_factory=lambda: _zeros(np.float64))
    count: I8 = field(default_factory=lambda: _zeros(np.int64))
    ended: B1 = field(default_factory=lambda: _zeros(bool))
    sealed: I8 = field(default_factory=lambda: _zeros(np.int64))  # index in SEALED
    open: B1 = field(default_factory=lambda: _zeros(bool))
    wm: F8 = field(default_factory=lambda: _zeros(np.float64))
    row0: I8 = field(default_factory=lambda: _zeros(np.int64))

    def __len__(self) -> int:
        return len(self.win)

    def track(self, i: int) -> Track:
        return Track(int(self.win[i]), int(self.seq[i]), float(self.last[i]), int(self.count[i]),
                     bool(self.ended[i]), SEALED[int(self.sealed[i])])

    def take(self, idx: Any) -> _States:
        return _States(*(getattr(self, f)[idx] for f in _STATE_FIELDS))

    @staticmethod
    def join(parts: list[_States]) -> _States:
        return _States(*(np.concatenate([getattr(p, f) for p in parts]) for f in _STATE_FIELDS))


class _Conns:
    """Connections as runs of sorted positions, and their packets' columns gathered so that the runs
    tile them (``heads_local``: where each connection starts there)."""

    def __init__(self, heads: I8, lens: I8, gi_s: I8, ts_s: F8, fl_s: Any, seq_s: I8, win_s: I8) -> None:
        self.heads = heads
        self.lens = lens
        self.pk = runs_index(heads, lens)  # sorted positions of the joined packets
        self.heads_local = np.cumsum(lens) - lens
        self.run_of = np.repeat(np.arange(len(heads), dtype=np.int64), lens)
        self.k = np.arange(len(self.pk), dtype=np.int64) - self.heads_local[self.run_of]
        self.ti = gi_s[self.pk]  # column index (of the slice's columns) of each
        self.ts = ts_s[self.pk]
        self.fl = fl_s[self.pk]
        self.seq = seq_s[self.pk]
        self.win = win_s[self.pk]

    def subset(self, sel: B1) -> _Conns:
        """The connections ``sel`` (their packets' columns re-gathered)."""
        out = _Conns.__new__(_Conns)
        out.heads = self.heads[sel]
        out.lens = self.lens[sel]
        idx = runs_index(self.heads_local[sel], out.lens)
        out.pk = self.pk[idx]
        out.heads_local = np.cumsum(out.lens) - out.lens
        out.run_of = np.repeat(np.arange(len(out.lens), dtype=np.int64), out.lens)
        out.k = self.k[idx]
        out.ti = self.ti[idx]
        out.ts = self.ts[idx]
        out.fl = self.fl[idx]
        out.seq = self.seq[idx]
        out.win = self.win[idx]
        return out


class _Gated:
    """What the gate stage of one slice found, for deciding and carrying over."""

    def __init__(self) -> None:
        self.conns: _Conns | None = None
        self.order: I8 = _zeros(np.int64)  # sorted position -> gate-order index
        self.rank: I8 = _zeros(np.int64)  # tuple rank per sorted position
        self.tuple_src: I8 = _zeros(np.int64)  # per tuple rank: its endpoints
        self.tuple_dst: I8 = _zeros(np.int64)
        self.replayed: dict[int, Track | None] = {}  # replayed tuple rank -> its Track at the end
        self.table_ts: F8 = _zeros(np.float64)  # per gate-order row: its time if it reaches the table, else -inf
        self.carried_wm: F8 = _zeros(np.float64)  # per carried packet (gate order): its connection's ``wm``


class _Layout:
    """The gate order of a slice: the packets of the carried connections its packets meet, one
    virtual SYN per decided state they meet, then its own packets; sorted by tuple (stable)."""

    def __init__(self) -> None:
        self.touched: I8 = _zeros(np.int64)  # states met
        self.t_open: I8 = _zeros(np.int64)  # ... whose connection is open (their packets come first)
        self.t_virt: I8 = _zeros(np.int64)  # ... decided, or finished by the slice's first packet (a virtual row each)
        self.t_fin: I8 = _zeros(np.int64)  # ... open, finished by the slice's first packet (decided from the arena)
        self.rows_idx: I8 = _zeros(np.int64)  # carried rows, in gate order
        self.order: I8 = _zeros(np.int64)  # sorted position -> gate-order index
        self.first: B1 = _zeros(bool)  # a tuple's first sorted position
        self.ukeys: npt.NDArray[np.uint64] = _zeros(np.uint64)  # per tuple (ascending): its hash
        self.t_src: I8 = _zeros(np.int64)  # per tuple: its endpoints
        self.t_dst: I8 = _zeros(np.int64)
        self.e_ord: I8 = _zeros(np.int64)  # states sorted by hash (reverse lookups)
        self.e_hs: npt.NDArray[np.uint64] = _zeros(np.uint64)
        self.hi = np.uint64(0)  # the hash bits in use
        self.seed = 0


class _Arena:
    """The carried packets: columns with spare room, appended in place; rows of connections that were
    decided become garbage, and the live ones are compacted once garbage is most of it."""

    def __init__(self) -> None:
        self.cols: dict[str, Any] = {k: np.zeros(0, dtype=t) for k, t in DTYPES.items()}
        self.n = 0

    def view(self, addresses: AddressTable) -> Columns:
        return Columns(addresses=addresses, **{k: v[:self.n] for k, v in self.cols.items()})

    def append(self, cols: Columns, idx: I8) -> int:
        """Rows ``idx`` of ``cols`` at the end; returns where they start."""
        base, k = self.n, len(idx)
        if base + k > len(self.cols["ts"]):
            cap = max((base + k) * 5 // 4, 1 << 12)
            for name, v in self.cols.items():
                grown = np.empty(cap, dtype=v.dtype)
                grown[:base] = v[:base]
                self.cols[name] = grown
        for name, v in self.cols.items():
            np.take(getattr(cols, name), idx, out=v[base:base + k])
        self.n = base + k
        return base

    def compact(self, idx: I8) -> None:
        """Keep only rows ``idx`` (in that order), in place."""
        for v in self.cols.values():
            v[:len(idx)] = v[idx]
        self.n = len(idx)


class BatchRun:
    """One batch run for an Analyzer: fills its summary, rollup, files and sink like Analyzer.run would."""

    def __init__(self, analyzer: Analyzer, slice_frames: int = SLICE_FRAMES) -> None:
        self.a = analyzer
        self.params = analyzer.topology.window
        self.size = self.params.size_s
        self.max_packets = self.params.max_packets
        self.idle_mode = self.params.mode == MODE_IDLE
        self.slice_frames = slice_frames
        self.geo_cache: dict[int, GeoInfo] = {}
        self.samples: dict[tuple[int, int], bool] = {}  # endpoint pair -> sampled (bounded cache)
        self.seed = 0  # of the tuple hash (changed if two tuples ever share a hash)
        self.first: F8 = _zeros(np.float64)
        self.end_ts = float("-inf")
        self.counters: dict[str, int] = {}
        # carried over between slices
        self.rows = _Arena()  # packets of the open connections (``_States.row0``)
        self.states = _States()
        self.gate_wm = float("-inf")  # latest time of a packet that reached the gate
        self.gate_win = -1  # the gate's current window: earlier ones are closed (Gate.current_window)
        self.table_wm = float("-inf")  # latest time of a packet that reached the table (its watermark)

    # -- helpers ---------------------------------------------------------------------------------

    def _geo(self, cols: Columns, addr: int) -> GeoInfo:
        g = self.geo_cache.get(addr)
        if g is None:
            g = self.geo_cache[addr] = self.a.geo.lookup(cols.addresses.packed(addr))
        return g

    def _windows(self, ts: F8) -> I8:
        """window_of for each time: once when the earliest and the latest share a window (the rule is
        monotonic in time), else per packet."""
        if not len(ts):
            none: I8 = _zeros(np.int64)
            return none
        lo, hi = window_of(float(ts.min()), self.size), window_of(float(ts.max()), self.size)
        if lo == hi:
            return np.full(len(ts), int(lo), dtype=np.int64)
        out: I8 = window_of(ts, self.size).astype(np.int64)
        return out

    def _count_gate(self, name: str, n: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- the run ---------------------------------------------------------------------------------

    def run(self, paths: Iterable[Path], progress: Progress | None = None) -> int | None:
        """None when done; else how many frames' records were delivered before the batch engine
        found what only the per-packet path can answer (that path then runs, skipping them)."""
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            return 0
        reader = SliceReader([Path(p) for p in paths], self.slice_frames)
        delivered = 0
        for new in reader:
            self.end_ts = new.end_ts
            frames = new.frames
            box = [new]  # _slice takes the only reference: the slice is freed once joined with what is carried
            del new
            try:
                self._slice(box, final=False)
            except _Fallback:
                return delivered
            delivered += frames
            if progress is not None:
                progress.update(reader.bytes_read, delivered)
        self.end_ts = reader.end_ts
        self._slice([empty_columns(reader.addresses)], final=True)
        a = self.a
        a.files.extend(reader.files)
        a.end_ts = reader.end_ts
        s = a.summary
        s.packets["read"] = reader.frames
        s.packets["tcp"] = self.counters.pop("tcp", 0)
        s.excluded["non_tcp"] = reader.non_tcp
        s.excluded["malformed"] = sum(reader.malformed.values())
        for reason, count in reader.malformed.items():
            s.malformed[reason] += count
        tc = {k: self.counters.pop(k, 0) for k in EXCLUSIONS}
        s.take_counters(self.counters, tc)
        return None

    def _slice(self, box: list[Columns], final: bool) -> None:
        """One slice: its packets after the carried ones they meet; decide what the table emits by its end."""
        new = box.pop()
        n = len(new)
        dirs = self.a.gate.direction.codes(new.flags, new.src, new.sport, new.dst, new.dport, new.addresses.packed)
        n_s2c = int(np.count_nonzero(dirs == S2C))
        n_other = int(np.count_nonzero(dirs == OTHER))
        gidx_new = np.flatnonzero((dirs != S2C) & (dirs != OTHER))
        del dirs
        ts_new = new.ts[gidx_new]
        win_new = self._windows(ts_new)
        back = 0.0
        if len(ts_new):
            if not bool(np.all(ts_new >= 0)):
                raise _Fallback("negative event time")
            if bool(np.any(win_new < np.maximum(np.maximum.accumulate(win_new), self.gate_win))):
                raise _Fallback("late packets (a window closed before them): the per-packet path counts them")
            back = float(np.max(np.maximum(np.maximum.accumulate(ts_new), self.gate_wm) - ts_new))
        lay = self._layout(new, gidx_new)
        np_ = len(lay.rows_idx)
        if np_:
            cols = join_columns([self.rows.view(new.addresses).take(lay.rows_idx).arrays(), new.arrays()],
                                new.addresses)
            del new
        else:
            cols = new
        g = self._gate(cols, lay, gidx_new + np_, ts_new, win_new, back)
        # -- nothing of the analyzer changes before this point (the last possible _Fallback) --------
        gate_wm = max(self.gate_wm, float(ts_new.max())) if len(ts_new) else self.gate_wm
        gate_win = max(self.gate_win, int(win_new.max())) if len(win_new) else self.gate_win
        self._count_gate("tcp", n)
        self._count_gate("server_to_client", n_s2c)
        self._count_gate("other_traffic", n_other)
        del ts_new, win_new, gidx_new
        self._decide(cols, g, lay, final, gate_win)
        self.gate_wm, self.gate_win = gate_wm, gate_win

    def _layout(self, new: Columns, gidx_new: I8) -> _Layout:
        """Which carried states the slice's packets meet, and the gate order sorted by tuple (stable).

        The slice's own packets are sorted by a hash of their tuple (its high bits, the gate index in
        the low ones: one plain sort, stable by construction); each carried state is matched to its
        tuple's run and its packets (or virtual SYN) go in front of that run. Two tuples sharing a
        hash are always found (endpoints differ within a run, or two states share one): the hash is
        then re-seeded, so the grouping is exact."""
        stt = self.states
        ns = len(stt)
        m = len(gidx_new)
        src_n = (new.src[gidx_new] << 16) | new.sport[gidx_new]
        dst_n = (new.dst[gidx_new] << 16) | new.dport[gidx_new]
        lay = _Layout()
        bits = max(m, 1).bit_length()
        low = np.uint64((1 << bits) - 1)
        hi = ~low
        seed = self.seed
        while True:
            comp = (_tuple_hash(src_n, dst_n, seed) & hi) | np.arange(m, dtype=np.uint64)
            comp.sort()  # all distinct: the plain sort is stable in the gate index
            order_n = (comp & low).astype(np.int64)
            hs = comp & hi
            del comp
            brk = np.empty(m, dtype=bool)  # a tuple's first packet
            brk[:1] = True
            np.not_equal(hs[1:], hs[:-1], out=brk[1:])
            heads_n = np.flatnonzero(brk)
            uh = hs[heads_n]
            so, do_ = src_n[order_n], dst_n[order_n]
            clash = bool(np.any((so[1:] != so[:-1]) & ~brk[1:])) or bool(np.any((do_[1:] != do_[:-1]) & ~brk[1:]))
            u_src, u_dst = so[heads_n], do_[heads_n]
            del so, do_, hs
            e_h = _tuple_hash(stt.src, stt.dst, seed) & hi
            e_ord = np.argsort(e_h)
            e_hs = e_h[e_ord]
            del e_h
            clash = clash or bool(np.any(e_hs[1:] == e_hs[:-1]))
            s_hit = u_hit = _zeros(np.int64)
            if ns and len(uh) and not clash:
                ix = np.minimum(np.searchsorted(uh, e_hs), len(uh) - 1)
                hit = uh[ix] == e_hs
                s_hit, u_hit = e_ord[hit], ix[hit]
                clash = bool(np.any((stt.src[s_hit] != u_src[u_hit]) | (stt.dst[s_hit] != u_dst[u_hit])))
            if not clash:
                break
            seed += 1
        self.seed = lay.seed = seed
        lay.hi = hi
        # carried states met: open ones bring their packets, decided ones a virtual SYN (gate order:
        # carried packets, virtual rows, the slice's packets)
        is_open = stt.open[s_hit]
        if is_open.any():
            # An ended connection whose tuple's first packet here is a SYN with a new sequence number in
            # its window: that SYN finishes it and opens the next (core.table.step: FINISH_OPEN), so the
            # connection takes nothing more; a virtual row stands for it, its packets stay in the arena.
            so_ = s_hit[is_open]
            ci = gidx_new[order_n[heads_n[u_hit[is_open]]]]
            # (core.table.ended_reopens, the column form of that step: many rows where clients reuse
            # ports within the grace period, as a load generator does)
            syn_ = is_syn(new.flags[ci])
            same = stt.win[so_] == window_of(new.ts[ci], self.size).astype(np.int64)
            reused = stt.ended[so_] & ended_reopens(same, stt.sealed[so_] != 0,
                                                    syn_ & (new.seq[ci].astype(np.int64) != stt.seq[so_]))
            lay.t_fin = so_[reused]
            is_open[np.flatnonzero(is_open)[reused]] = False
        t_open, u_open = s_hit[is_open], u_hit[is_open]
        t_virt, u_virt = s_hit[~is_open], u_hit[~is_open]
        cnt = stt.count[t_open]
        rows_idx = runs_index(stt.row0[t_open], cnt)
        np_, nv = len(rows_idx), len(t_virt)
        nu = len(uh)
        extra = np.zeros(nu, dtype=np.int64)
        extra[u_open] = cnt
        extra[u_virt] = 1
        shift = np.cumsum(extra)  # rows in front of each run, its own included
        mg = m + np_ + nv
        order = np.empty(mg, dtype=np.int64)
        run_of_n = np.cumsum(brk) - 1
        pos_n = np.arange(m, dtype=np.int64) + shift[run_of_n]
        order[pos_n] = np_ + nv + order_n
        del pos_n, order_n
        start = heads_n + shift - extra  # where each run starts in the merged order
        order[runs_index(start[u_open], cnt)] = np.arange(np_, dtype=np.int64)
        order[start[u_virt]] = np_ + np.arange(nv, dtype=np.int64)
        first = np.zeros(mg, dtype=bool)
        first[start] = True
        lay.touched = s_hit
        lay.t_open, lay.t_virt, lay.rows_idx = t_open, t_virt, rows_idx
        lay.order, lay.first, lay.ukeys, lay.t_src, lay.t_dst = order, first, uh, u_src, u_dst
        lay.e_ord, lay.e_hs = e_ord, e_hs
        return lay

    def _gate(self, cols: Columns, lay: _Layout, gidx_new: I8, ts_new: F8, win_new: I8, back: float) -> _Gated:
        """Gate.admit (and ConnectionTable's membership) for the slice's packets after the carried ones."""
        a = self.a
        out = _Gated()
        stt = self.states
        np_, nv = len(lay.rows_idx), len(lay.t_virt)
        mg = np_ + nv + len(gidx_new)
        if mg == 0:
            return out
        order = lay.order
        first = lay.first
        rank = np.cumsum(first) - 1  # tuple rank per sorted position
        ukeys, t_src, t_dst = lay.ukeys, lay.t_src, lay.t_dst
        nk = len(ukeys)
        out.carried_wm = np.repeat(stt.wm[lay.t_open], stt.count[lay.t_open])
        # -- sampling: one keyed hash per unordered pair of endpoints ------------------------------
        sampler = a.gate.sampler
        kind = np.full(mg, 2, dtype=np.int8)  # 0 carried packet, 1 carried state, 2 new packet
        kind[:np_] = 0
        kind[np_:np_ + nv] = 1
        kind_s = kind[order]
        del kind
        new_s = kind_s == 2
        virt_s = kind_s == 1
        if sampler.keep_all:
            samp = np.ones(mg, dtype=bool)
        else:
            samp_key = np.empty(nk, dtype=bool)
            cache = self.samples
            if len(cache) > 1 << 20:
                cache.clear()
            packed = cols.addresses.packed
            for i, (s, dd) in enumerate(zip(t_src.tolist(), t_dst.tolist(), strict=True)):
                pair = (s, dd) if s <= dd else (dd, s)
                hit = cache.get(pair)
                if hit is None:
                    hit = cache[pair] = sampler.keep((packed(s >> 16), s & 0xFFFF, packed(dd >> 16), dd & 0xFFFF))
                samp_key[i] = hit
            samp = samp_key[rank]
            self._count_gate("unsampled", int((~samp & new_s).sum()))
        # -- the packets' fields in sorted order ----------------------------------------------------
        # gate order -> column index of the slice's columns (-1: virtual), window, carried state
        gi_s = np.concatenate((np.arange(np_, dtype=np.int64), np.full(nv, -1, dtype=np.int64), gidx_new))[order]
        win_s = np.concatenate((self._windows(cols.ts[:np_]), stt.win[lay.t_virt],
                                win_new))[order]  # window_of of the slice's packets: computed in _slice
        vpos = np.flatnonzero(virt_s)
        state_of = np.zeros(mg, dtype=np.int64)  # carried state of a virtual row
        vst = state_of[vpos] = lay.t_virt[order[vpos] - np_]
        ts_s = cols.ts[gi_s]  # (a virtual row reads the last packet's, then its own)
        ts_s[vpos] = stt.last[vst]
        fl_s = cols.flags[gi_s]  # a carried state is a virtual SYN with its sequence number
        fl_s[vpos] = TH_SYN
        seq_s = cols.seq[gi_s]
        seq_s[vpos] = stt.seq[vst]
        del vpos, vst
        # -- segments (sampled tuples) --------------------------------------------------------------
        syn_s = is_syn(fl_s)
        pos = np.arange(mg, dtype=np.int64)
        group = first  # a tuple's packets of one window (``first`` is not needed any more)
        group[1:] |= win_s[1:] != win_s[:-1]
        gstart = np.maximum.accumulate(np.where(group, pos, 0))
        prev_syn = np.empty(mg, dtype=np.int64)
        prev_syn[0] = -1
        np.maximum.accumulate(np.where(syn_s, pos, -1)[:-1], out=prev_syn[1:])
        has_prev = prev_syn >= gstart
        del gstart
        cand = syn_s & (~has_prev | (seq_s != seq_s[np.maximum(prev_syn, 0)]))
        del prev_syn, has_prev
        seg_head = group | cand
        heads = np.nonzero(seg_head)[0]
        seg_of = np.cumsum(seg_head) - 1
        k = pos - heads[seg_of]  # position within its segment
        head_virt = virt_s[heads]  # a segment after a carried state, until the next new sequence number
        is_conn_seg = syn_s[heads] & ~head_virt  # a segment that opens with a SYN is a connection's
        del syn_s
        conn_pk = is_conn_seg[seg_of]
        joined = conn_pk & (k < self.max_packets)
        end_pk = ends(fl_s)
        # ended before each packet (its segment's first RST/FIN came earlier), and the gap it closes
        first_end = reduce_runs(np.minimum, np.where(end_pk & joined, pos, mg), heads)
        ended_before = first_end[seg_of] < pos
        del first_end, pos
        gap = ts_s - before(cummax_runs(ts_s, seg_head), seg_head, np.inf)
        # -- tuples the segment view cannot decide: replayed through core.table.track ------------
        bad = joined & (k > 0) & ~plain_join(gap, ended_before, self.params)
        bad |= head_virt[seg_of] & ~virt_s  # packets that meet a decided state: its rule decides them
        seg_len = np.diff(np.r_[heads, mg])
        seg_ended = (reduce_runs(np.logical_or, end_pk & joined, heads) | (seg_len >= self.max_packets)) & is_conn_seg
        hv = np.nonzero(head_virt)[0]
        sv = state_of[heads[hv]]
        seg_ended[hv] = stt.ended[sv] | (stt.sealed[sv] != 0)
        # a SYN that starts a segment although the previous connection of its window had not ended
        prev_open = np.zeros(len(heads), dtype=bool)
        prev_open[1:] = cand[heads[1:]] & ~group[heads[1:]] & ~seg_ended[:-1]
        bad[heads[prev_open]] = True
        del cand, group, prev_open, seg_ended, end_pk, seg_head, seg_of, head_virt, hv, sv
        bad &= samp
        bad_key = np.zeros(nk, dtype=bool)
        bad_key[rank[bad]] = True
        del bad
        replay = bad_key[rank]
        simple = samp & ~replay
        del samp, bad_key
        # -- counters and connections of the simple tuples -----------------------------------------
        self._count_gate("sampled", int((simple & joined & new_s).sum()))
        self._count_gate("beyond_max_packets", int((simple & conn_pk & ~joined & new_s).sum()))
        no_syn_q = simple & ~conn_pk & new_s
        del conn_pk
        c_sel = is_conn_seg & simple[heads]
        c_heads = heads[c_sel]
        c_lens = np.minimum(seg_len[c_sel], self.max_packets)
        del c_sel, seg_len, heads, is_conn_seg
        opens = np.zeros(mg, dtype=bool)  # where a connection was opened (for the reverse lookup)
        opens[c_heads] = True
        # -- replayed tuples -------------------------------------------------------------------------
        r_heads: list[int] = []
        r_lens: list[int] = []
        deciders: list[int] = []  # sorted positions of FINISH_DROP packets: they reach the table too
        if replay.any():
            params = self.params
            rp = np.nonzero(replay)[0]
            counters: dict[str, int] = {}
            st: Track | None = None
            carried: Track | None = None  # the tuple's decided state: the table emitted its connection
            cur_rank = -1
            head = cnt = -1
            sampled = 0
            for p, ts, fl, sq, w, rk, kd, sv_ in zip(rp.tolist(), ts_s[rp].tolist(), fl_s[rp].tolist(),
                                                     seq_s[rp].tolist(), win_s[rp].tolist(), rank[rp].tolist(),
                                                     kind_s[rp].tolist(), state_of[rp].tolist(), strict=True):
                if rk != cur_rank:
                    if cur_rank >= 0:
                        out.replayed[cur_rank] = st
                    st = carried = None
                    cur_rank = rk
                if kd == 1:
                    st = carried = stt.track(sv_)
                    continue
                o, st = track(st, ts, fl, sq, w, params)
                if o.step is Step.JOIN and st is carried:
                    raise _Fallback("a packet joins a connection the table has emitted already")
                if o.step is Step.OPEN or o.step is Step.FINISH_OPEN:
                    if head >= 0:
                        r_heads.append(head)
                        r_lens.append(cnt)
                    head, cnt = p, 1
                    opens[p] = True
                elif o.step is Step.JOIN:
                    cnt += 1
                if kd == 0:
                    continue  # a carried packet: counted in its own slice
                if o.counter == NO_SYN:
                    no_syn_q[p] = True
                elif o.counter:
                    counters[o.counter] = counters.get(o.counter, 0) + 1  # the gate's or the table's count
                if o.step is not Step.DROP:
                    sampled += 1  # it leaves the gate (FINISH_DROP: to decide its connection in the table)
                    if o.step is Step.FINISH_DROP:
                        deciders.append(p)
            out.replayed[cur_rank] = st
            if head >= 0:
                r_heads.append(head)
                r_lens.append(cnt)
            self._count_gate("sampled", sampled)
            for name, v in counters.items():
                self._count_gate(name, v)
        # -- packets without a connection: server-to-client when learnt from the reverse tuple ----
        no_syn = int(no_syn_q.sum())
        if not a.gate.direction.configured and no_syn:
            rev = self._learnt(lay, no_syn_q, opens, rank, ukeys, t_src, t_dst, win_s)
            self._count_gate("server_to_client", rev)
            no_syn -= rev
        self._count_gate(NO_SYN, no_syn)
        del no_syn_q, opens
        all_heads = np.concatenate((c_heads, np.asarray(r_heads, dtype=np.int64)))
        all_lens = np.concatenate((c_lens, np.asarray(r_lens, dtype=np.int64)))
        srt = np.argsort(all_heads, kind="stable")
        conns = _Conns(all_heads[srt], all_lens[srt], gi_s, ts_s, fl_s, seq_s, win_s)
        out.conns, out.order, out.rank = conns, order, rank
        out.tuple_src, out.tuple_dst = t_src, t_dst
        # what reaches the table, in gate order (carried packets were counted in the watermark already)
        table_ts = np.full(mg, -np.inf)
        pkn = conns.pk[new_s[conns.pk]]
        table_ts[order[pkn]] = ts_s[pkn]
        dec = np.asarray(deciders, dtype=np.int64)
        table_ts[order[dec]] = ts_s[dec]
        out.table_ts = table_ts
        # The per-packet table could emit a connection before a packet that joins it only when time goes
        # back by at least what that packet's gap leaves of its limit: check exactly when that may happen.
        if back > 0:
            limit = np.where(ended_before, self.params.grace_s, self.params.idle_s if self.idle_mode else np.inf)
            if bool(replay.any()) or bool(np.any(simple & joined & new_s & (k > 0) & (gap + back >= limit))):
                self._check_emission(conns, order, table_ts, new_s)
        return out

    def _learnt(self, lay: _Layout, no_syn_q: B1, opens: B1, rank: I8, ukeys: npt.NDArray[np.uint64], t_src: I8,
                t_dst: I8, win_s: I8) -> int:
        """How many packets without a connection are server-to-client: the reverse tuple opened a
        connection in the packet's window before it (in this slice, or a carried state's). Looked up
        once per (tuple, window) of the packets, compared per packet."""
        stt = self.states
        order = lay.order
        big = np.int64(1) << 62
        qpos = np.flatnonzero(no_syn_q)
        qr, qw = rank[qpos], win_s[qpos]
        b = np.empty(len(qpos), dtype=bool)
        b[:1] = True
        b[1:] = (qr[1:] != qr[:-1]) | (qw[1:] != qw[:-1])
        ub = np.flatnonzero(b)
        inv = np.cumsum(b) - 1
        ur, uw = qr[ub], qw[ub]
        us, ud = t_src[ur], t_dst[ur]
        rk_h = _tuple_hash(ud, us, lay.seed) & lay.hi  # the reverse tuple
        nk = len(ukeys)
        rr = np.minimum(np.searchsorted(ukeys, rk_h), nk - 1)
        exists = (ukeys[rr] == rk_h) & (t_src[rr] == ud) & (t_dst[rr] == us)
        # each (tuple, window) run of the slice: its first opening (gate order)
        gh = np.flatnonzero(lay.first | np.r_[True, win_s[1:] != win_s[:-1]])
        w0 = int(win_s.min())
        nw = (int(win_s.max()) - w0) // self.size + 1
        gkey = rank[gh] * nw + (win_s[gh] - w0) // self.size  # ascending
        g_open = np.minimum.reduceat(np.where(opens, order, big), gh)
        ukey = rr * nw + (uw - w0) // self.size
        gi = np.minimum(np.searchsorted(gkey, ukey), len(gkey) - 1)
        first_open = np.where(exists & (gkey[gi] == ukey), g_open[gi], big)
        ok = order[qpos] > first_open[inv]
        ns = len(stt)
        if ns:  # or a carried state of the reverse tuple in the packet's window (opened in an earlier slice)
            ix = np.minimum(np.searchsorted(lay.e_hs, rk_h), ns - 1)
            si = lay.e_ord[ix]
            ok |= ((lay.e_hs[ix] == rk_h) & (stt.src[si] == ud) & (stt.dst[si] == us) & (stt.win[si] == uw))[inv]
        return int(ok.sum())

    def _check_emission(self, c: _Conns, order: I8, table_ts: F8, new_s: B1) -> None:
        """_Fallback when the per-packet table would have emitted a connection before a packet that
        joins it arrived (its watermark, from other tuples, already past the gap that packet closes)."""
        if not len(c.lens):
            return
        wm = np.maximum(np.maximum.accumulate(table_ts), self.table_wm)
        wm_before = np.empty(len(wm))
        wm_before[0] = self.table_wm
        wm_before[1:] = wm[:-1]
        wb = wm_before[order[c.pk]]
        head_mask = c.k == 0
        last_prev = before(cummax_runs(c.ts, head_mask), head_mask, np.inf)
        ended_before = count_before(ends(c.fl), head_mask) > 0
        limit = np.where(ended_before, self.params.grace_s, self.params.idle_s if self.idle_mode else np.inf)
        if bool(np.any(new_s[c.pk] & (wb >= last_prev + limit))):
            raise _Fallback("the table's watermark passed a connection before its next packet")

    # -- deciding, carrying over -----------------------------------------------------------------

    def _emitted(self, table_wm: float, wm: F8, last: F8, ended: B1, win: I8) -> B1:
        """Whether the table emitted a connection that can still take packets (ended: its grace passed;
        idle mode: quiet long enough before its window's end) at a watermark advance after its latest
        packet (``wm``: the watermark right after that packet was added), or closed its window."""
        p = self.params
        due = ended & (table_wm >= last + p.grace_s)
        if self.idle_mode:
            due |= ~ended & (table_wm >= last + p.idle_s) & (last + p.idle_s <= win + self.size)
        out: B1 = ((table_wm > wm) & due) | (window_of(table_wm, self.size) > win)
        return out

    def _decide(self, cols: Columns, g: _Gated, lay: _Layout, final: bool, gate_win: int) -> None:
        """Decide, classify and count the connections the table emits by the slice's end; carry the rest."""
        stt = self.states
        table_wm = self.table_wm
        if len(g.table_ts):
            table_wm = max(table_wm, float(g.table_ts.max()))
        parts: list[_States] = []
        tc: dict[str, int] = dict.fromkeys(EXCLUSIONS, 0)
        # -- carried states no packet of the slice met -----------------------------------------------
        untouched = np.ones(len(stt), dtype=bool)
        untouched[lay.touched] = False
        uo = np.nonzero(untouched & stt.open)[0]
        parts.append(stt.take(untouched & ~stt.open))
        del untouched
        arena = self.rows
        if len(uo) or len(lay.t_fin):
            carried = arena.view(cols.addresses)
            if final:
                done = np.ones(len(uo), dtype=bool)
            else:
                done = self._emitted(table_wm, stt.wm[uo], stt.last[uo], stt.ended[uo], stt.win[uo])
            dn, ko = uo[done], uo[~done]
            dc = np.concatenate((dn, lay.t_fin))  # decided now, with the packets they hold
            if len(dc):
                pk = runs_index(stt.row0[dc], stt.count[dc])
                cc = _Conns(np.cumsum(stt.count[dc]) - stt.count[dc], stt.count[dc], pk, carried.ts[pk],
                            carried.flags[pk], carried.seq[pk], self._windows(carried.ts[pk]))
                self._decide_and_count(carried, cc, stt.last[dc], tc)
                del cc, pk
            if len(dn):  # their tuples keep the state (those finished by a SYN get the next connection's)
                s = stt.take(dn)
                s.open[:] = False
                parts.append(s)
            del carried
            kept = stt.take(ko)  # their packets stay where they are, unless most of the arena is garbage
            held = int(kept.count.sum())
            if arena.n - held > max(held // 2, 1 << 14):
                arena.compact(runs_index(kept.row0, kept.count))
                kept.row0 = np.cumsum(kept.count) - kept.count
            parts.append(kept)
        else:
            arena.n = 0  # no connection is held: every carried packet is garbage
        # -- the slice's connections -----------------------------------------------------------------
        c = g.conns
        if c is not None and len(c.lens):
            h = c.heads_local
            nc = len(c.lens)
            last = reduce_runs(np.maximum, c.ts, h)
            t_rank = g.rank[c.heads]
            is_last = np.ones(nc, dtype=bool)
            is_last[:-1] = t_rank[:-1] != t_rank[1:]
            ended = reduce_runs(np.logical_or, ends(c.fl), h)
            sealed = c.lens >= self.max_packets
            for j in np.nonzero(is_last)[0].tolist() if g.replayed else ():
                st = g.replayed.get(int(t_rank[j]))
                if st is not None and st.sealed:
                    sealed[j] = True  # decided by the packet after it (FINISH_DROP) or its max_packets-th
            # the table's watermark right after each packet was added (carried ones: their connection's)
            wm_g = np.maximum(np.maximum.accumulate(g.table_ts), self.table_wm)
            wm_g[:len(g.carried_wm)] = g.carried_wm
            wm_upd = wm_g[g.order[c.pk[h + c.lens - 1]]]  # after its latest packet (runs are in input order)
            del wm_g
            win = c.win[h]
            if final:
                done = np.ones(nc, dtype=bool)
            else:
                done = ~is_last | sealed | self._emitted(table_wm, wm_upd, last, ended, win)
            fin = c if done.all() else c.subset(done)
            if len(fin.lens):
                self._decide_and_count(cols, fin, last[done], tc)
            del fin
            # decided latest connections of the simple tuples: their Track from the columns
            dl = done & is_last
            if g.replayed:
                dl &= ~np.isin(t_rank, np.fromiter(g.replayed, np.int64, len(g.replayed)))
            r = t_rank[dl]
            lens = c.lens[dl]
            parts.append(_States(g.tuple_src[r], g.tuple_dst[r], win[dl], c.seq[h[dl]], last[dl], lens, ended[dl],
                                 np.where(lens >= self.max_packets, SEALED.index(END_MAX_PACKETS), 0),
                                 np.zeros(len(r), dtype=bool), np.zeros(len(r)), np.zeros(len(r), dtype=np.int64)))
            # open connections: their packets are carried
            op = np.nonzero(~done)[0]
            if len(op):
                lens = c.lens[op]
                base = arena.append(cols, c.ti[runs_index(h[op], lens)])
                r = t_rank[op]
                parts.append(_States(g.tuple_src[r], g.tuple_dst[r], win[op], c.seq[h[op]], last[op], lens,
                                     ended[op], np.zeros(len(op), dtype=np.int64), np.ones(len(op), dtype=bool),
                                     wm_upd[op], base + np.cumsum(lens) - lens))
            open_ranks = set(t_rank[op].tolist())
        else:
            open_ranks = set()
        # replayed tuples: their Track as the replay left it
        rk_l: list[int] = []
        tr_l: list[Track] = []
        for rk_, st in g.replayed.items():
            if st is not None and rk_ not in open_ranks:
                rk_l.append(rk_)
                tr_l.append(st)
        if rk_l:
            r = np.asarray(rk_l, dtype=np.int64)
            nr = len(r)
            parts.append(_States(
                g.tuple_src[r], g.tuple_dst[r], np.asarray([t.window_start for t in tr_l], dtype=np.int64),
                np.asarray([t.syn_seq for t in tr_l], dtype=np.int64),
                np.asarray([t.last_ts for t in tr_l], dtype=np.float64),
                np.asarray([t.count for t in tr_l], dtype=np.int64), np.asarray([t.ended for t in tr_l], dtype=bool),
                np.asarray([SEALED.index(t.sealed) for t in tr_l], dtype=np.int64), np.zeros(nr, dtype=bool),
                np.zeros(nr), np.zeros(nr, dtype=np.int64)))
        for name, v in tc.items():
            self._count_gate(name, v)
        states = _States.join(parts)
        live = states.open | (states.win >= gate_win)  # decided states of windows the gate closed: gone
        if not live.all():
            states = states.take(live)
        self.states = states
        self.table_wm = table_wm

    # -- decisions, classification, counting -------------------------------------------------------

    def _decide_and_count(self, cols: Columns, c: _Conns, last: F8, tc: dict[str, int]) -> None:
        params = self.params
        h = c.heads_local
        fl = c.fl
        syns = reduce_runs(np.add, is_syn(fl).astype(np.int64), h)
        has_end = reduce_runs(np.logical_or, ends(fl), h)
        self.first = reduce_runs(np.minimum, c.ts, h)
        window = c.win[h]
        cutoff = np.minimum((window + self.size).astype(np.float64), self.end_ts)
        decided = has_end | (c.lens >= self.max_packets)
        if self.idle_mode:
            decided |= cutoff - last >= params.idle_s
        code = exclusion_code(syns, decided, last, cutoff, params)
        for i, name in enumerate(EXCLUSIONS, 1):
            tc[name] += int((code == i).sum())
        ok = code == X_NONE
        if not ok.any():
            return
        ti = c.ti
        r = Rows(c.lens, fl, c.seq, cols.ack[ti], cols.payload[ti], cols.ttl[ti], cols.ipid[ti], cols.window[ti],
                 cols.optlen[ti])
        syn = ti[h]  # the opening SYN (the only one: multi_syn connections are excluded)
        v4 = cols.version[syn] == 4
        scan = scanner_code(cols.window[syn].astype(np.int64), cols.ipid[syn].astype(np.int64),
                            cols.optlen[syn].astype(np.int64), cols.ttl[syn].astype(np.int64),
                            cols.version[syn].astype(np.int64), np.where(v4, cols.dst[syn], -1),
                            cols.dport[syn].astype(np.int64), cols.seq[syn])
        has_rst = r.any((fl & TH_RST) != 0)
        self._classify_columns(cols, c, ok & ~has_rst, last, r, scan)
        served = ok & has_rst & in_columns(r)
        self._classify_resets(cols, c, np.nonzero(served)[0], last, r, scan)
        for i in np.nonzero(ok & has_rst & ~served)[0].tolist():
            self._emit_reference(cols, c, i)

    def _classify_columns(self, cols: Columns, c: _Conns, sel: B1, last: F8, r: Rows, scan: I8) -> None:
        """Connections without an RST: the core's stage, timeout and scanner rules over columns."""
        if not sel.any():
            return
        h = c.heads_local
        syn = c.ti[h]
        codes = plain_codes(r, scan, self.max_packets)
        rows = np.nonzero(sel)[0]
        if self.a.on_record is not None:
            self._records(cols, c, rows, codes, last)
        # Summary and rollup, per (window, client address, verdict).
        sw, sc, scd = c.win[h][rows], cols.src[syn][rows], codes[rows]
        grp = np.lexsort((scd, sc, sw))
        sw, sc, scd = sw[grp], sc[grp], scd[grp]
        brk = np.ones(len(rows), dtype=bool)
        brk[1:] = (sw[1:] != sw[:-1]) | (sc[1:] != sc[:-1]) | (scd[1:] != scd[:-1])
        gheads = np.nonzero(brk)[0]
        counts = np.diff(np.r_[gheads, len(rows)])
        # the latest last_ts of each group: what names an asn row (Rollup: the most recent record's name)
        glast = np.maximum.reduceat(last[rows][grp], gheads).tolist() if len(rows) else []
        for g0, cnt, gl in zip(gheads.tolist(), counts.tolist(), glast, strict=True):
            v = verdict(int(scd[g0]))
            g = self._geo(cols, int(sc[g0]))
            self._count(int(sw[g0]), v, g.country, g.asn, g.as_name, float(gl), cnt)

    def _classify_resets(self, cols: Columns, c: _Conns, sel: I8, last: F8, r: Rows, scan: I8) -> None:
        """Reset connections the columns serve (``verdicts.in_columns``), each counted and recorded."""
        if not len(sel):
            return
        verdicts = reset_verdicts(r, sel, scan, self.a.topology.evidence)
        sink = self.a.on_record
        for i, v in zip(sel.tolist(), verdicts, strict=True):
            h0 = int(c.heads_local[i])
            s = int(c.ti[h0])
            g = self._geo(cols, int(cols.src[s]))
            self._count(int(c.win[h0]), v, g.country, g.asn, g.as_name, float(last[i]), 1)
            if sink is not None:
                sink(self._record(cols, c, i, v, last, g))

    def _record(self, cols: Columns, c: _Conns, i: int, v: Verdict, last: F8, g: GeoInfo) -> ConnectionRecord:
        """The record of connection ``i`` (its SYN opens its run) with verdict ``v``."""
        h0 = int(c.heads_local[i])
        s = int(c.ti[h0])
        packed = cols.addresses.packed
        key = (packed(int(cols.src[s])), int(cols.sport[s]), packed(int(cols.dst[s])), int(cols.dport[s]))
        return build_record(key, int(c.win[h0]), int(cols.seq[s]), float(self.first[i]), float(last[i]),
                            int(c.lens[i]), v, self.params.mode, g.country, g.asn, g.as_name)

    def _count(self, window: int, v: Verdict, country: str, asn: int, as_name: str, last_ts: float,
               cnt: int) -> None:
        """Summary.count and Rollup.add for cnt identical records (what they read of a record)."""
        rec = {"window_start": window, "stage": v.stage, "tags": v.tags, "signature": v.signature,
               "scanner": v.scanner, "injected": v.injected, "evidence": v.evidence, "country": country, "asn": asn,
               "as_name": as_name, "last_ts": last_ts}
        self.a.summary.count(rec, cnt)
        self.a.rollup.add(rec, cnt)

    def _records(self, cols: Columns, c: _Conns, rows: I8, codes: I8, last: F8) -> None:
        sink = self.a.on_record
        assert sink is not None
        for r in rows.tolist():
            g = self._geo(cols, int(cols.src[c.ti[c.heads_local[r]]]))
            sink(self._record(cols, c, r, verdict(int(codes[r])), last, g))

    def _emit_reference(self, cols: Columns, c: _Conns, r: int) -> None:
        """A reset connection the columns do not serve (``verdicts.in_columns``), by the reference make_record."""
        a = self.a
        h0 = int(c.heads_local[r])
        idx = c.ti[h0:h0 + int(c.lens[r])].tolist()
        pkts = [cols.record(i) for i in idx]
        p0 = pkts[0]
        conn = Connection(p0.tuple_key, int(c.win[h0]), p0.seq, min(p.ts for p in pkts), max(p.ts for p in pkts),
                          pkts)
        g = self._geo(cols, int(cols.src[idx[0]]))
        w = a.topology
        rec = make_record(conn, w.window.max_packets, w.evidence, w.window.mode, g.country, g.asn, g.as_name)
        a.summary.count(rec)
        a.rollup.add(rec)
        if a.on_record is not None:
            a.on_record(rec)


def input_bytes(paths: Iterable[Path]) -> int:
    """On-disk size of the input, compressed files counted 8 times (a rough expansion ratio)."""
    total = 0
    for p in paths:
        path = Path(p)
        try:
            with path.open("rb") as fh:
                head = fh.read(6)
            size = path.stat().st_size
        except OSError:
            continue  # the reader reports it
        total += size * (8 if compression(head) else 1)
    return total


def run(analyzer: Analyzer, paths: Iterable[Path], progress: Progress | None = None,
        slice_frames: int | None = None) -> int | None:
    """Run the batch engine for an analyzer. None: done. Else the per-packet path must run, and the
    records of that many frames are delivered already (0: nothing of the analyzer changed).

    Memory is bounded by the slice size, whatever the input's size; RSTSCOPE_BATCH_MAX_BYTES (bytes of
    input, compressed files counted 8x) still sends larger inputs to the per-packet path if set."""
    paths = [Path(p) for p in paths]
    limit = os.environ.get("RSTSCOPE_BATCH_MAX_BYTES")
    if limit is not None and input_bytes(paths) > int(limit):
        return 0
    frames = slice_frames or int(os.environ.get("RSTSCOPE_SLICE_FRAMES", SLICE_FRAMES))
    return BatchRun(analyzer, frames).run(paths, progress)
