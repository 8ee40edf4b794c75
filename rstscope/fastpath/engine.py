"""The batch engine: the gate, the connection table and classification over columns, per connection.

It computes exactly what ``Gate.admit`` + ``ConnectionTable.add`` + ``make_record`` compute packet by
packet (the reference, which the streaming workers run), under one precondition it checks: event time
never goes backwards over the packets that reach the gate (and is not negative). Then both
watermarks are simply the current packet's time, the LRU sweeps of gate and table remove exactly the
entries whose last packet is at least the idle timeout old, and every per-tuple decision depends only
on that tuple's own packets plus "when does the watermark next pass X", a binary search. When the
precondition fails, ``run`` returns False and the caller uses the per-packet path.

The steps (numpy unless noted):

1. direction of every TCP packet (configured addresses/ports, or SYN-ACK -> server-to-client);
2. tuple ids for the packets that reach the gate; sampling per tuple (the keyed hash, once per pair);
3. the gate, grouped by tuple: gate segments start at a SYN that has no live entry or a new ISN, live
   until a gap of at least the idle timeout; the first ``max_packets`` packets of a segment are
   admitted; a packet without a live entry is server-to-client when the reverse tuple has a live
   entry at that moment (a binary search over that tuple's packets), else ``no_syn``;
4. the table over the admitted packets: each gate segment's admitted run is one connection, and how
   it ends (``max_packets``, idle or window close by the watermark, reuse, end of input) follows from
   searches in the admitted timestamps; tuples with a run that spans a window boundary go through a
   per-tuple Python replay of ``ConnectionTable.add`` (same searches for the watermark);
5. classification: connections with no RST are classified with reductions over their packets
   (stage, timeout tags, scanner marks of the SYN); connections with an RST, and those from the
   per-tuple replay, go through the reference ``make_record``;
6. summary and rollups are counted per (window, client address, verdict), not per connection;
   records are built one by one only when a sink wants them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rstscope.core.classify import (
    LATER,
    NO_MATCH,
    POST_ACK,
    POST_PSH,
    POST_SYN,
    SCANNERS,
    signature,
)
from rstscope.core.record import RECORD_VERSION, connection_id, make_record
from rstscope.core.rollup import Cell, dimension_keys
from rstscope.core.table import (
    END_IDLE,
    END_INPUT,
    END_MAX_PACKETS,
    END_REUSED,
    END_SUPERSEDED,
    END_WINDOW,
    EXCL_INCOMPLETE,
    EXCL_MULTI_SYN,
    EXCL_SUPERSEDED,
    Connection,
)
from rstscope.fastpath.reader import Columns, read_columns
from rstscope.geo import GeoInfo
from rstscope.packet import ip_text

if TYPE_CHECKING:
    from rstscope.analyze import Analyzer

I8 = npt.NDArray[np.int64]
F8 = npt.NDArray[np.float64]
B1 = npt.NDArray[np.bool_]

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
STAGE_LIST = (POST_SYN, POST_ACK, POST_PSH, LATER, NO_MATCH)
SCANNER_LIST: tuple[str | None, ...] = (None, *SCANNERS)  # code 0: none


class _Fallback(Exception):
    """The batch engine cannot prove its answer equal to the per-packet path's: use that path."""


def _gone(last: Any, wm_then: Any, wm_now: Any, now: Any, idle: float) -> tuple[Any, Any]:
    """Whether an entry last touched at time ``last`` (watermark ``wm_then`` after that touch) is gone when
    a packet at ``now`` (watermark ``wm_now``) looks it up: (gone, ambiguous).

    An LRU sweep at watermark W removes entries in touch order while their last time is <= W - idle.
    Every entry touched before ours has a last time <= wm_then, so a sweep with W - idle >= wm_then
    surely reaches and removes ours; one with W - idle < last surely does not. In between (only when
    our last packet was behind the watermark, i.e. timestamps went backwards) the answer depends on
    the LRU order of other tuples: ambiguous. Not swept, the lookup itself drops it when now - last >= idle.
    """
    swept = wm_now - idle >= wm_then
    kept = wm_now - idle < last
    return swept | (kept & (now - last >= idle)), ~swept & ~kept


def _windows(ts: F8, size: int) -> I8:
    """int(ts // size) * size, elementwise."""
    return np.floor_divide(ts, size).astype(np.int64) * size


@dataclass
class _Conn:
    """A connection from the per-tuple replay (step 4 fallback)."""

    window: int
    syn_seq: int
    first_ts: float
    last_ts: float
    packets: list[int] = field(default_factory=list)  # admitted indices
    retrans: int = 0
    ended: bool = False

    @property
    def a_last(self) -> int:
        return self.packets[-1]


class _Ctx:
    """What the table steps share: the admitted packets in input order and the searches over them."""

    def __init__(self, adm_ts: F8, idle: float, size: int, end_ts: float) -> None:
        self.ts = adm_ts
        self.wm = np.maximum.accumulate(adm_ts) if len(adm_ts) else adm_ts  # the table's watermark
        self.wm_idle = self.wm - idle  # non-decreasing: the idle sweep at each admitted packet
        self.win = _windows(adm_ts, size)  # each packet's window
        self.wm_win = _windows(self.wm, size)  # the oldest open window after each packet
        self.flags: npt.NDArray[Any] = np.zeros(0, np.int64)
        self.seq = np.zeros(0, np.int64)
        self.idle = idle
        self.size = size
        self.n = len(adm_ts)
        self.end_ts = end_ts
        self.end_win = int(end_ts // size) * size if np.isfinite(end_ts) else None

    def sweep_at(self, last: float, a_last: int) -> int:
        """The first admitted packet whose idle sweep removes an entry last touched by packet a_last."""
        q1 = int(np.searchsorted(self.wm_idle, last, "left"))
        q2 = int(np.searchsorted(self.wm_idle, self.wm[a_last], "left"))
        if q1 != q2 and q1 < self.n:
            raise _Fallback("idle sweep depends on the LRU order")
        return q2

    def next_event(self, last: float, window: int, a_last: int) -> tuple[int, str]:
        """The first admitted packet whose watermark finalizes an open connection, and why."""
        qi = self.sweep_at(last, a_last)
        qw = int(np.searchsorted(self.wm_win, window, "right"))
        return (qi, END_IDLE) if qi <= qw else (qw, END_WINDOW)

    def end_reason(self, last: float, window: int, a_last: int) -> str:
        """How a connection still open after the last admitted packet ends (advance(end_ts), close())."""
        if self.end_ts - self.idle >= self.wm[a_last]:
            return END_IDLE
        if not self.end_ts - self.idle < last:
            raise _Fallback("idle sweep at the end depends on the LRU order")
        if self.end_win is not None and self.end_win > window:
            return END_WINDOW
        return END_INPUT


def _replay_key(ctx: _Ctx, packets: list[int], max_packets: int,
                out: list[tuple[_Conn, str]]) -> tuple[int, int]:
    """ConnectionTable.add for one tuple's admitted packets; returns (after_close, no_syn)."""
    idle = ctx.idle
    conn: _Conn | None = None
    marker: tuple[int, float, int] | None = None  # (syn seq, last time, admitted index of last touch)
    after_close = no_syn = 0
    for k in packets:
        if conn is not None:
            q, why = ctx.next_event(conn.last_ts, conn.window, conn.a_last)
            if q <= k:
                out.append((conn, why))
                conn = None
        if marker is not None and ctx.sweep_at(marker[1], marker[2]) <= k:
            marker = None
        ts = float(ctx.ts[k])
        win = int(ctx.win[k])
        fl = int(ctx.flags[k])
        sq = int(ctx.seq[k])
        is_syn = fl & (TH_SYN | TH_ACK | TH_RST) == TH_SYN
        if conn is not None:
            if conn.window != win:
                out.append((conn, END_WINDOW))
                conn = None
            elif ts - conn.last_ts >= idle:
                out.append((conn, END_IDLE))
                marker = None
                conn = None
        if conn is not None:
            if is_syn and sq != conn.syn_seq:
                out.append((conn, END_REUSED if conn.ended else END_SUPERSEDED))
                conn = _Conn(win, sq, ts, ts, [k])
                marker = None
                continue
            conn.packets.append(k)
            conn.last_ts = max(conn.last_ts, ts)
            conn.first_ts = min(conn.first_ts, ts)
            if fl & (TH_RST | TH_FIN):
                conn.ended = True
            elif fl & (TH_SYN | TH_ACK) == TH_SYN and sq == conn.syn_seq:
                conn.retrans += 1
            if len(conn.packets) >= max_packets:
                out.append((conn, END_MAX_PACKETS))
                marker = (conn.syn_seq, conn.last_ts, k)
                conn = None
            continue
        if marker is not None and ts - marker[1] >= idle:
            marker = None
        if is_syn and (marker is None or marker[0] != sq):
            conn = _Conn(win, sq, ts, ts, [k])
            marker = None
        elif marker is not None:
            after_close += 1
            marker = (marker[0], max(marker[1], ts), k)
        else:
            no_syn += 1
    if conn is not None:
        q, why = ctx.next_event(conn.last_ts, conn.window, conn.a_last)
        out.append((conn, why if q < ctx.n else ctx.end_reason(conn.last_ts, conn.window, conn.a_last)))
    return after_close, no_syn


def _excluded(end: str, last_ts: float, window: int, retrans: int, size: int, margin: float) -> str | None:
    """ConnectionTable._finalize's exclusion rule."""
    if end in (END_WINDOW, END_INPUT):
        return EXCL_INCOMPLETE
    if end == END_SUPERSEDED:
        return EXCL_SUPERSEDED
    if end == END_IDLE and last_ts >= window + size - margin:
        return EXCL_INCOMPLETE
    if retrans:
        return EXCL_MULTI_SYN
    return None


def _segment_any(values: B1, starts: I8) -> B1:
    return np.logical_or.reduceat(values, starts) if len(starts) else np.zeros(0, dtype=bool)


def _segment_sum(values: Any, starts: I8) -> I8:
    if not len(starts):
        return np.zeros(0, dtype=np.int64)
    return np.add.reduceat(np.asarray(values, dtype=np.int64), starts)


class _Verdicts:
    """Verdict codes of the vectorized connections -> the record fields make_record would give."""

    def __init__(self) -> None:
        self.cache: dict[int, dict[str, Any]] = {}

    @staticmethod
    def code(stage: I8, timed_out: B1, scanner: I8) -> I8:
        return (stage * 2 + timed_out.astype(np.int64)) * len(SCANNER_LIST) + scanner

    def fields(self, code: int) -> dict[str, Any]:
        got = self.cache.get(code)
        if got is None:
            rest, scan = divmod(code, len(SCANNER_LIST))
            stage_i, timed = divmod(rest, 2)
            stage = STAGE_LIST[stage_i]
            mark = SCANNER_LIST[scan]
            tags = ["timeout"] if timed else []
            if mark == "zmap":
                tags.append("zmap")
            sig = signature(stage, bool(timed), tags) if stage != NO_MATCH else None
            got = {"stage": stage, "tags": tags, "signature": sig, "ttl_delta": None, "ipid_delta": None,
                   "injected": False, "scanner": mark}
            self.cache[code] = got
        return got


def _scanner_codes(cols: Columns, idx: I8) -> I8:
    """scanner_mark of the SYNs at idx, as an index into SCANNER_LIST."""
    win = cols.window[idx]
    ipid = cols.ipid[idx]
    opt = cols.optlen[idx]
    v4 = (cols.version[idx] == 4) & (ipid >= 0)
    dst = cols.dst[idx]
    seq = cols.seq[idx]
    zmap = (win == 65535) & ((ipid == 54321) | (opt <= 4))
    masscan = v4 & ((win == 1024) | (win == 1025)) & (ipid == ((dst ^ cols.dport[idx] ^ seq) & 0xFFFF))
    mirai = v4 & (seq == dst)
    generic = (opt == 0) & (cols.ttl[idx] >= 200)
    out = np.zeros(len(idx), dtype=np.int64)
    for code, mask in ((4, generic), (3, mirai), (2, masscan), (1, zmap)):  # the first match wins
        out[mask] = code
    return out


class BatchRun:
    """One batch run for an Analyzer: fills its summary, rollup, files and sink like Analyzer.run would."""

    def __init__(self, analyzer: Analyzer) -> None:
        self.a = analyzer
        w = analyzer.topology.window
        self.size = w.size_s
        self.idle = w.idle_timeout_s
        self.margin = float(w.cutoff_margin_s)
        self.max_packets = w.max_packets
        self.geo_cache: dict[int, GeoInfo] = {}

    # -- helpers ---------------------------------------------------------------------------------

    def _geo(self, cols: Columns, addr: int) -> GeoInfo:
        g = self.geo_cache.get(addr)
        if g is None:
            g = self.geo_cache[addr] = self.a.geo.lookup(cols.addresses.packed(addr))
        return g

    def _server_mask(self, cols: Columns, ips: I8, ports: npt.NDArray[Any]) -> B1:
        d = self.a.gate.direction
        ok = np.ones(len(ips), dtype=bool)
        if d.nets:
            uniq, inv = np.unique(ips, return_inverse=True)
            hit = np.fromiter((d._is_server_ip(cols.addresses.packed(int(u))) for u in uniq), bool, len(uniq))
            ok &= hit[inv.ravel()]
        if d.ports:
            ok &= np.isin(ports, np.fromiter(d.ports, np.int64, len(d.ports)))
        return ok

    # -- the run ---------------------------------------------------------------------------------

    def run(self, paths: Iterable[Path]) -> bool:
        a = self.a
        if not isinstance(self.size, int) or isinstance(self.size, bool):
            return False
        cols = read_columns([Path(p) for p in paths])
        d = a.gate.direction
        flags = cols.flags
        n = len(cols)
        if d.configured:
            c2s = self._server_mask(cols, cols.dst, cols.dport)
            s2c = ~c2s & self._server_mask(cols, cols.src, cols.sport)
            other = ~c2s & ~s2c
            gate_mask = c2s
        else:
            s2c = (flags & (TH_SYN | TH_ACK)) == (TH_SYN | TH_ACK)
            other = np.zeros(n, dtype=bool)
            gate_mask = ~s2c
        gidx = np.nonzero(gate_mask)[0]
        ts_g = cols.ts[gidx]
        if len(ts_g) and not bool(np.all(ts_g >= 0)):
            return False  # negative event time: the per-packet path decides
        gc: dict[str, int] = {"server_to_client": int(s2c.sum()), "other_traffic": int(other.sum())}
        tc: dict[str, int] = {"after_close": 0, "no_syn": 0, "late": 0, "multi_syn": 0, "incomplete": 0,
                              "superseded": 0}
        try:
            # Nothing of the analyzer changes before the last possible _Fallback.
            gated = self._gate(cols, gidx, ts_g, gc)
            if gated is not None:
                self._table(cols, *gated, gc, tc)
        except _Fallback:
            return False
        a.files.extend(cols.files)
        a.end_ts = cols.end_ts
        s = a.summary
        s.packets["read"] = cols.frames
        s.packets["tcp"] = n
        s.excluded["non_tcp"] = cols.non_tcp
        s.excluded["malformed"] = sum(cols.malformed.values())
        for reason, count in cols.malformed.items():
            s.malformed[reason] += count
        for k in ("server_to_client", "other_traffic", "unsampled", "beyond_max_packets", "sampled"):
            s.packets[k] = gc.get(k, 0)
        s.packets["after_close"] = tc["after_close"]
        s.packets["client_to_server"] = n - gc["server_to_client"] - gc["other_traffic"]
        s.excluded["no_syn"] = gc.get("no_syn", 0) + tc["no_syn"]
        for k in ("multi_syn", "incomplete", "superseded", "late"):
            s.excluded[k] = tc[k]
        return True

    def _gate(self, cols: Columns, gidx: I8, ts_g: F8,
              gc: dict[str, int]) -> tuple[I8, F8, I8, I8, B1, B1] | None:
        """Gate.admit for every packet that reaches the gate; counters into gc; what the table needs."""
        a = self.a
        idle = self.idle
        mg = len(gidx)
        if mg == 0:
            for k in ("unsampled", "beyond_max_packets", "sampled", "no_syn"):
                gc[k] = 0
            return None
        src_ep = cols.src[gidx] * 65536 + cols.sport[gidx]
        dst_ep = cols.dst[gidx] * 65536 + cols.dport[gidx]
        eps, inv = np.unique(np.concatenate((src_ep, dst_ep)), return_inverse=True)
        inv = inv.ravel()
        ne = len(eps)
        es, ed = inv[:mg], inv[mg:]
        key = es * ne + ed
        rkey = ed * ne + es
        del src_ep, dst_ep, eps, inv, es, ed
        order = np.argsort(key, kind="stable")
        sk = key[order]
        first = np.empty(mg, dtype=bool)
        first[0] = True
        np.not_equal(sk[1:], sk[:-1], out=first[1:])
        rank = np.cumsum(first) - 1
        ukeys = sk[first]
        nk = len(ukeys)
        gfirst = np.nonzero(first)[0]  # sorted position of each key's first packet
        # Sampling: one keyed hash per unordered pair of endpoints.
        sampler = a.gate.sampler
        if sampler.keep_all:
            samp_key = np.ones(nk, dtype=bool)
        else:
            rep = order[gfirst]  # a packet of each key (gate order index)
            ga = gidx[rep]
            pair = np.minimum(key[rep], rkey[rep])
            cache: dict[int, bool] = {}
            packed = cols.addresses.packed
            res = np.empty(nk, dtype=bool)
            for i, (pk, g) in enumerate(zip(pair.tolist(), ga.tolist(), strict=True)):
                hit = cache.get(pk)
                if hit is None:
                    hit = cache[pk] = sampler.keep((packed(int(cols.src[g])), int(cols.sport[g]),
                                                    packed(int(cols.dst[g])), int(cols.dport[g])))
                res[i] = hit
            samp_key = res
        samp = samp_key[rank]
        ts_s = ts_g[order]
        if bool(np.any((ts_s[1:] < ts_s[:-1]) & ~first[1:])):
            raise _Fallback("time goes backwards within a tuple")
        wm_s = np.maximum.accumulate(ts_g)[order]  # the gate's watermark after each packet
        gi_s = gidx[order]
        fl_s = cols.flags[gi_s]
        seq_s = cols.seq[gi_s]
        is_syn = (fl_s & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN
        pos = np.arange(mg)
        gs = np.maximum.accumulate(np.where(first, pos, 0))  # group start per position
        brk = np.zeros(mg, dtype=bool)
        gone, amb = _gone(ts_s[:-1], wm_s[:-1], wm_s[1:], ts_s[1:], idle)
        brk[1:] = gone
        brk &= ~first
        if bool(np.any(amb & ~first[1:] & samp[1:])):
            raise _Fallback("gate entry expiry depends on the LRU order")
        cb = np.cumsum(brk)
        syn_pos = np.maximum.accumulate(np.where(is_syn, pos, -1))
        p = np.empty(mg, dtype=np.int64)
        p[0] = -1
        p[1:] = syn_pos[:-1]
        has_p = p >= gs
        ps = np.where(has_p, p, 0)
        start = is_syn & samp & (~has_p | (cb - cb[ps] > 0) | (seq_s != seq_s[ps]))
        del syn_pos, p, has_p, ps, brk, gone, amb, fl_s, seq_s, is_syn
        s_pos = np.maximum.accumulate(np.where(start, pos, -1))
        has_s = s_pos >= gs
        ss = np.where(has_s, s_pos, 0)
        alive = has_s & samp & (cb - cb[ss] == 0)
        in_seg = pos - ss
        admitted = alive & (in_seg < self.max_packets)
        beyond = alive & ~admitted
        del s_pos, has_s, ss, in_seg, cb, gs, pos
        gc["unsampled"] = int((~samp).sum())
        gc["beyond_max_packets"] = int(beyond.sum())
        gc["sampled"] = int(admitted.sum())
        dead_pk = samp & ~alive  # never a SYN: a SYN with a sampled tuple always (re)starts an entry
        no_syn = int(dead_pk.sum())
        if not a.gate.direction.configured and no_syn:
            qpos = np.nonzero(dead_pk)[0]
            jq = order[qpos]  # gate-order index of each query
            rk = rkey[jq]
            rr = np.searchsorted(ukeys, rk)
            rr_c = np.minimum(rr, nk - 1)
            exists = (rr < nk) & (ukeys[rr_c] == rk)
            sortval = rank * mg + order
            at = np.searchsorted(sortval, rr_c * mg + jq, "left") - 1
            at_c = np.maximum(at, 0)
            ok = exists & (at >= 0) & (rank[at_c] == rr_c) & alive[at_c]
            gone, amb = _gone(ts_s[at_c], wm_s[at_c], wm_s[qpos], ts_s[qpos], idle)
            if bool(np.any(ok & amb)):
                raise _Fallback("reverse-tuple lookup depends on the LRU order")
            ok &= ~gone
            rev = int(ok.sum())
            gc["server_to_client"] += rev
            no_syn -= rev
        gc["no_syn"] = no_syn
        return gi_s, ts_s, order, rank, start, admitted

    def _table(self, cols: Columns, gi_s: I8, ts_s: F8, order: I8, rank: I8, start: B1, admitted: B1,
               gc: dict[str, int], tc: dict[str, int]) -> None:
        mg = len(order)
        size = self.size
        max_packets = self.max_packets
        idle = self.idle
        adm_g = np.zeros(mg, dtype=bool)
        adm_g[order] = admitted
        aidx_g = np.cumsum(adm_g) - 1
        cols_adm = np.sort(gi_s[admitted])  # TCP column index of each admitted packet, in input order
        ctx = _Ctx(cols.ts[cols_adm], idle, size, cols.end_ts)
        if bool(np.any(ctx.win < ctx.wm_win)):
            raise _Fallback("late packets")
        ap = np.nonzero(admitted)[0]  # sorted positions of admitted packets (runs are contiguous)
        if not len(ap):
            return
        na = len(ap)
        a_of = aidx_g[order[ap]]  # admitted (input-order) index of each
        ti = gi_s[ap]  # TCP column index of each
        fl = cols.flags[ti]
        sq = cols.seq[ti]
        ts = ts_s[ap]
        win = ctx.win[a_of]
        rs = np.nonzero(start[ap])[0]  # run starts (offsets into ap)
        nr = len(rs)
        re_ = np.empty(nr, dtype=np.int64)
        re_[:-1] = rs[1:]
        re_[-1] = na
        m = re_ - rs
        last = re_ - 1
        r_rank = rank[ap[rs]]
        w0 = win[rs]
        simple_run = win[last] == w0
        complex_key = np.zeros(int(rank[-1]) + 1, dtype=bool)
        complex_key[r_rank[~simple_run]] = True
        cx_run = complex_key[r_rank]
        # -- simple runs, vectorized ---------------------------------------------------------------
        L = ts[last]
        syn_seq = sq[rs]
        notfirst = np.ones(na, dtype=bool)
        notfirst[rs] = False
        run_of = np.repeat(np.arange(nr), m)
        retr_pk = notfirst & ((fl & (TH_RST | TH_FIN)) == 0) & ((fl & (TH_SYN | TH_ACK)) == TH_SYN) & (
            sq == syn_seq[run_of])
        retrans = _segment_sum(retr_pk, rs)
        ended = _segment_any(notfirst & ((fl & (TH_RST | TH_FIN)) != 0), rs)
        a_last = a_of[last]
        wm_last = ctx.wm[a_last]
        q1 = np.searchsorted(ctx.wm_idle, L, "left")
        qi = np.searchsorted(ctx.wm_idle, wm_last, "left")
        if bool(np.any(~cx_run & (m < max_packets) & (q1 != qi) & (q1 < ctx.n))):
            raise _Fallback("idle sweep depends on the LRU order")
        qw = np.searchsorted(ctx.wm_win, w0, "right")
        qg = np.minimum(qi, qw)
        g_idle = qi <= qw
        has_next = np.zeros(nr, dtype=bool)
        has_next[:-1] = r_rank[1:] == r_rank[:-1]
        k_next = np.full(nr, ctx.n, dtype=np.int64)
        k_next[:-1] = a_of[rs[1:]]
        ts_next = np.zeros(nr)
        ts_next[:-1] = ts[rs[1:]]
        # Codes: 0 max, 1 idle, 2 window, 3 reused, 4 superseded, 5 input
        end = np.full(nr, 5, dtype=np.int64)
        glob = np.where(g_idle, 1, 2)
        by_global = has_next & (qg <= k_next) | ~has_next & (qg < ctx.n)
        end[by_global] = glob[by_global]
        by_key = has_next & ~by_global
        key_idle = by_key & (ts_next - L >= idle)
        end[key_idle] = 1
        reuse = by_key & ~key_idle
        end[reuse] = np.where(ended[reuse], 3, 4)
        at_end = ~has_next & ~by_global
        if at_end.any():
            e_idle = at_end & (ctx.end_ts - idle >= wm_last)
            if bool(np.any(~cx_run & (m < max_packets) & at_end & ~e_idle & ~(ctx.end_ts - idle < L))):
                raise _Fallback("idle sweep at the end depends on the LRU order")
            end[e_idle] = 1
            if ctx.end_win is not None:
                end[at_end & ~e_idle & (ctx.end_win > w0)] = 2
        end[m >= max_packets] = 0
        cutoff = (w0 + size).astype(np.float64) - self.margin
        excl_incomplete = (end == 2) | (end == 5) | ((end == 1) & (cutoff <= L))
        excl_super = end == 4
        excl_multi = ~excl_incomplete & ~excl_super & (retrans > 0)
        ok_run = ~cx_run & ~excl_incomplete & ~excl_super & ~excl_multi
        simple = ~cx_run
        tc["incomplete"] += int((simple & excl_incomplete).sum())
        tc["superseded"] += int((simple & excl_super).sum())
        tc["multi_syn"] += int((simple & excl_multi).sum())
        # -- complex tuples: replay -------------------------------------------------------------------
        python_conns: list[tuple[list[int], _Conn]] = []  # (TCP column indices, connection)
        if cx_run.any():
            ctx.flags = cols.flags[cols_adm]
            ctx.seq = cols.seq[cols_adm]
            for r in np.nonzero(cx_run & (np.r_[True, r_rank[1:] != r_rank[:-1]]))[0].tolist():
                key_rank = r_rank[r]
                lo = rs[r]
                hi = int(np.searchsorted(r_rank, key_rank, "right"))
                hi_pk = na if hi >= nr else int(rs[hi])
                done: list[tuple[_Conn, str]] = []
                ac, ns = _replay_key(ctx, a_of[lo:hi_pk].tolist(), max_packets, done)
                tc["after_close"] += ac
                tc["no_syn"] += ns
                for conn, why in done:
                    ex = _excluded(why, conn.last_ts, conn.window, conn.retrans, size, self.margin)
                    if ex:
                        tc[ex] += 1
                    else:
                        python_conns.append(([int(cols_adm[k]) for k in conn.packets], conn))
        # -- classification ------------------------------------------------------------------------
        has_rst = _segment_any((fl & TH_RST) != 0, rs)
        vec = ok_run & ~has_rst
        for r in np.nonzero(ok_run & has_rst)[0].tolist():
            idx = ti[rs[r]:re_[r]].tolist()
            c = _Conn(int(w0[r]), int(syn_seq[r]), float(ts[rs[r]]), float(L[r]), [], int(retrans[r]),
                      bool(ended[r]))
            python_conns.append((idx, c))
        self._classify_vectorized(cols, ti, fl, sq, rs, re_, m, vec, w0, L)
        for idx, c in python_conns:
            self._emit_python(cols, idx, c)

    def _classify_vectorized(self, cols: Columns, ti: I8, fl: npt.NDArray[Any], sq: I8, rs: I8, re_: I8, m: I8, vec: B1,
                             w0: I8, L: F8) -> None:
        if not vec.any():
            return
        a = self.a
        ack = cols.ack[ti]
        pl = cols.payload[ti]
        big = np.int64(1) << 40
        nonsyn = (fl & TH_SYN) == 0
        isdata = nonsyn & (((fl & TH_PSH) != 0) | (pl > 0))
        has_fin = _segment_any((fl & TH_FIN) != 0, rs)
        n_others = _segment_sum(nonsyn, rs)
        n_data = _segment_sum(isdata, rs)
        ack_max = np.maximum.reduceat(np.where(nonsyn, ack, -1), rs)
        ack_min = np.minimum.reduceat(np.where(nonsyn, ack, big), rs)
        d_max = np.maximum.reduceat(np.where(isdata, sq, -1), rs)
        d_min = np.minimum.reduceat(np.where(isdata, sq, big), rs)
        dseq = np.repeat(d_min, m)
        diff = (sq - dseq) % (1 << 32)
        after = nonsyn & (diff > 0) & (diff < (1 << 31))
        any_after = _segment_any(after, rs)
        timed_out = ~has_fin & (m < self.max_packets)
        stage = np.full(len(rs), STAGE_LIST.index(NO_MATCH), dtype=np.int64)
        t_syn = timed_out & (n_others == 0)
        t_ack = timed_out & (n_others > 0) & (n_data == 0) & (ack_max == ack_min)
        t_psh = timed_out & (n_others > 0) & (n_data > 0) & (d_max == d_min) & ~any_after
        stage[t_syn] = STAGE_LIST.index(POST_SYN)
        stage[t_ack] = STAGE_LIST.index(POST_ACK)
        stage[t_psh] = STAGE_LIST.index(POST_PSH)
        first_pk = ti[rs]
        scan = _scanner_codes(cols, first_pk)
        codes = _Verdicts.code(stage, timed_out, scan)
        verdicts = _Verdicts()
        sel = np.nonzero(vec)[0]
        client = cols.src[first_pk]
        if a.on_record is not None:
            self._records(cols, sel, first_pk, w0, L, m, codes, verdicts)
        # Summary and rollup, per (window, client address, verdict).
        sw, sc, scd = w0[sel], client[sel], codes[sel]
        grp = np.lexsort((scd, sc, sw))
        sw, sc, scd = sw[grp], sc[grp], scd[grp]
        brk = np.ones(len(sel), dtype=bool)
        brk[1:] = (sw[1:] != sw[:-1]) | (sc[1:] != sc[:-1]) | (scd[1:] != scd[:-1])
        heads = np.nonzero(brk)[0]
        counts = np.diff(np.r_[heads, len(sel)])
        for h, cnt in zip(heads.tolist(), counts.tolist(), strict=True):
            f = verdicts.fields(int(scd[h]))
            g = self._geo(cols, int(sc[h]))
            self._count(int(sw[h]), f, g.country, g.asn, cnt)

    def _count(self, window: int, f: dict[str, Any], country: str, asn: int, cnt: int) -> None:
        """Summary.count and Rollup.add for cnt identical records."""
        s = self.a.summary
        s.stages[f["stage"]] += cnt
        for t in f["tags"]:
            s.tags[t] += cnt
        if f["signature"]:
            s.signatures[f["signature"]] += cnt
        if f["scanner"]:
            s.scanners[f["scanner"]] += cnt
        if f["injected"]:
            s.injected += cnt
        rollup = self.a.rollup
        bucket = int(window) // rollup.bucket_s * rollup.bucket_s
        for dim, value in dimension_keys({"country": country, "asn": asn}):
            k = (bucket, dim, value)
            cell = rollup.cells.get(k)
            if cell is None:
                cell = rollup.cells[k] = Cell()
            cell.stages[f["stage"]] += cnt
            for t in f["tags"]:
                cell.tags[t] += cnt
            if f["signature"]:
                cell.signatures[f["signature"]] += cnt
            if f["stage"] == POST_SYN:
                cell.post_syn_unreliable += cnt

    def _records(self, cols: Columns, sel: I8, first_pk: I8, w0: I8, L: F8, m: I8, codes: I8,
                 verdicts: _Verdicts) -> None:
        sink = self.a.on_record
        assert sink is not None
        packed = cols.addresses.packed
        for r in sel.tolist():
            i = int(first_pk[r])
            cip, sip = packed(int(cols.src[i])), packed(int(cols.dst[i]))
            cport, sport = int(cols.sport[i]), int(cols.dport[i])
            first_ts = float(cols.ts[i])
            conn = Connection((cip, cport, sip, sport), int(w0[r]), int(cols.seq[i]), first_ts, float(L[r]))
            f = verdicts.fields(int(codes[r]))
            g = self._geo(cols, int(cols.src[i]))
            sink({
                "v": RECORD_VERSION,
                "id": connection_id(conn),
                "window_start": conn.window_start,
                "client_ip": ip_text(cip),
                "client_port": cport,
                "server_ip": ip_text(sip),
                "server_port": sport,
                "ip_version": 4 if len(cip) == 4 else 6,
                "first_ts": round(conn.first_ts, 6),
                "last_ts": round(conn.last_ts, 6),
                "packets": int(m[r]),
                "stage": f["stage"],
                "tags": list(f["tags"]),
                "signature": f["signature"],
                "ttl_delta": None,
                "ipid_delta": None,
                "injected": False,
                "scanner": f["scanner"],
                "country": g.country,
                "asn": g.asn,
                "as_name": g.as_name,
                "geo_reliable": f["stage"] != POST_SYN,
            })

    def _emit_python(self, cols: Columns, idx: list[int], c: _Conn) -> None:
        """A connection classified by the reference make_record (RSTs, replayed tuples)."""
        a = self.a
        pkts = [cols.record(i) for i in idx]
        p0 = pkts[0]
        conn = Connection(p0.tuple_key, c.window, c.syn_seq, c.first_ts, c.last_ts, pkts, c.retrans, c.ended)
        g = self._geo(cols, int(cols.src[idx[0]]))
        w = a.topology
        rec = make_record(conn, w.window.max_packets, w.evidence, g.country, g.asn, g.as_name)
        a.summary.count(rec)
        a.rollup.add(rec)
        if a.on_record is not None:
            a.on_record(rec)


# The batch engine holds the decoded columns of the whole input (about 300 bytes per packet at peak);
# above this much capture (compressed files counted 8x) the per-packet path, whose memory does not
# grow with the input, is used instead. RSTSCOPE_BATCH_MAX_BYTES overrides it.
BATCH_MAX_BYTES = 2 << 30


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
        packed = head[:2] == b"\x1f\x8b" or head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"BZh"
        total += size * (8 if packed else 1)
    return total


def run(analyzer: Analyzer, paths: Iterable[Path]) -> bool:
    """Run the batch engine for an analyzer; False (nothing changed) when the per-packet path must decide."""
    paths = [Path(p) for p in paths]
    limit = int(os.environ.get("RSTSCOPE_BATCH_MAX_BYTES", BATCH_MAX_BYTES))
    if input_bytes(paths) > limit:
        return False
    return BatchRun(analyzer).run(paths)

