"""The batch engine: the gate, the connection table and classification over columns of packets.

It computes what ``Gate.admit`` + ``ConnectionTable.add`` + ``make_record`` compute packet by packet
(the reference, which the streaming workers run) by reorganising the work, never by restating a rule:
every decision calls the core's rule functions and constants (``core.table``: ``is_syn``, ``ends``,
``window_of``, ``track``, ``exclusion_code``; ``core.classify``: ``shows_progress``, ``is_data``,
``seq_after``, ``reset_stage_code``, ``timeout_stage_code``, ``is_timeout``, ``scanner_code``,
``plain_verdict``; ``core.record.build_record``), which accept numpy columns as well as scalars.

Membership in a connection depends only on the tuple's own packets (core.table), so the work is
grouped by tuple:

1. direction of every TCP packet (configured addresses/ports, or SYN-ACK -> server-to-client);
2. tuple ids for the packets that reach the gate, sorted by tuple (stable: input order within one);
   sampling per tuple (the keyed hash, once per endpoint pair);
3. segments: within a tuple and window, a SYN whose sequence number differs from the previous SYN's
   starts a segment. When each such SYN comes after its previous connection ended (the common
   case: ports reused after a FIN or RST) and no connection pauses past the grace period (idle mode:
   the idle time), a segment is exactly one connection holding its first ``max_packets`` packets;
   the tuples where that does not hold are replayed packet by packet through ``core.table.track``;
4. packets without a connection are server-to-client when direction is learnt and the reverse
   tuple opened a connection in the same window (a search), else ``no_syn``;
5. each connection is decided (``exclusion_code`` at the cutoff min(window end, end of input)) and
   classified: without an RST by column reductions and the core's stage and scanner rules; with an
   RST by the reference ``make_record``;
6. summary and rollups are counted per (window, client address, verdict), not per connection;
   records are built one by one only when a sink wants them.

The table emits a connection when the watermark passes it, and the per-packet path would count a
packet that arrives after that (timestamps going backwards by more than the gap it closes) as
``after_close``; ``run`` checks that this never happens, and that no packet is late, and otherwise
returns False so that the caller uses the per-packet path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rstscope.capture.files import compression
from rstscope.config import MODE_IDLE
from rstscope.core.classify import (
    S_NO_MATCH,
    SCANNERS,
    STAGES,
    Verdict,
    is_data,
    is_timeout,
    plain_verdict,
    scanner_code,
    seq_after,
    shows_progress,
    timeout_stage_code,
)
from rstscope.core.record import build_record, make_record
from rstscope.core.table import (
    EXCLUSIONS,
    NO_SYN,
    X_NONE,
    Connection,
    Step,
    Track,
    ends,
    exclusion_code,
    is_syn,
    track,
    window_of,
)
from rstscope.fastpath.reader import Columns, read_columns
from rstscope.geo import GeoInfo
from rstscope.packet import TH_ACK, TH_FIN, TH_RST, TH_SYN

if TYPE_CHECKING:
    from rstscope.offline import Analyzer

I8 = npt.NDArray[np.int64]
F8 = npt.NDArray[np.float64]
B1 = npt.NDArray[np.bool_]
SCANNER_LIST: tuple[str | None, ...] = (None, *SCANNERS)  # scanner_code 0: none


class _Fallback(Exception):
    """The batch engine cannot prove its answer equal to the per-packet path's: use that path."""


def _runs_index(starts: I8, lens: I8) -> I8:
    """Positions of the runs [start, start + len) one after another."""
    total = int(lens.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    offs = np.cumsum(lens) - lens
    return np.repeat(starts - offs, lens) + np.arange(total, dtype=np.int64)


def _reduce(ufunc: Any, values: Any, heads: I8) -> Any:
    """ufunc.reduceat over runs that tile ``values`` (heads: where each run starts)."""
    if not len(heads):
        return np.zeros(0, dtype=np.asarray(values).dtype)
    return ufunc.reduceat(values, heads)


def _cummax_runs(values: F8, head_mask: B1) -> F8:
    """Cumulative max of ``values`` restarting where ``head_mask`` is set (exact for any floats)."""
    n = len(values)
    if not n:
        return values
    down = np.nonzero((values[1:] < values[:-1]) & ~head_mask[1:])[0] + 1
    if not len(down):
        return values  # already non-decreasing within each run (the usual case: time order)
    # only the runs where time goes back need work: ranks make the max exact and integer
    run_of = np.cumsum(head_mask) - 1
    heads = np.nonzero(head_mask)[0]
    bad_runs = np.unique(run_of[down])
    ends_ = np.r_[heads[1:], n]
    lens = ends_[bad_runs] - heads[bad_runs]
    idx = _runs_index(heads[bad_runs], lens)
    sub = values[idx]
    sub_run = np.repeat(np.arange(len(bad_runs), dtype=np.int64), lens)
    m = len(sub)
    order = np.argsort(sub, kind="stable")
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m, dtype=np.int64)
    best = np.maximum.accumulate(sub_run * m + rank) - sub_run * m  # the rank of each run's running max
    out = values.copy()
    out[idx] = sub[order[best]]
    return out


def _before(acc: Any, head_mask: B1, fill: Any) -> Any:
    """A running value (inclusive) shifted by one within runs: the value over the earlier elements."""
    out = np.empty_like(acc)
    if len(acc):
        out[1:] = acc[:-1]
        out[head_mask] = fill
    return out


def _count_before(flag: B1, head_mask: B1) -> I8:
    """Per element: how many earlier elements of its run have ``flag``."""
    cnt = np.cumsum(flag.astype(np.int64))
    run_start = np.maximum.accumulate(np.where(head_mask, np.arange(len(flag)), 0))
    base = np.where(run_start > 0, cnt[np.maximum(run_start - 1, 0)], 0)
    return cnt - flag - base


class BatchRun:
    """One batch run for an Analyzer: fills its summary, rollup, files and sink like Analyzer.run would."""

    def __init__(self, analyzer: Analyzer) -> None:
        self.a = analyzer
        self.params = analyzer.topology.window
        self.size = self.params.size_s
        self.max_packets = self.params.max_packets
        self.idle_mode = self.params.mode == MODE_IDLE
        self.geo_cache: dict[int, GeoInfo] = {}
        self.verdicts: dict[int, Verdict] = {}
        self.first: F8 = np.zeros(0)

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
        win_g = window_of(ts_g, self.size).astype(np.int64)
        if len(ts_g):
            if not bool(np.all(ts_g >= 0)):
                return False  # negative event time: the per-packet path decides
            if bool(np.any(win_g < np.maximum.accumulate(win_g))):
                return False  # late packets (a window closed before them): the per-packet path counts them
        gc: dict[str, int] = {"server_to_client": int(s2c.sum()), "other_traffic": int(other.sum())}
        try:
            # Nothing of the analyzer changes before the last possible _Fallback.
            conns = self._gate(cols, gidx, ts_g, win_g, gc)
        except _Fallback:
            return False
        tc: dict[str, int] = dict.fromkeys(EXCLUSIONS, 0)
        if conns is not None:
            self._decide_and_count(cols, conns, tc)
        a.files.extend(cols.files)
        a.end_ts = cols.end_ts
        s = a.summary
        s.packets["read"] = cols.frames
        s.packets["tcp"] = n
        s.excluded["non_tcp"] = cols.non_tcp
        s.excluded["malformed"] = sum(cols.malformed.values())
        for reason, count in cols.malformed.items():
            s.malformed[reason] += count
        s.take_counters(gc, tc)
        return True

    def _gate(self, cols: Columns, gidx: I8, ts_g: F8, win_g: I8, gc: dict[str, int]) -> _Conns | None:
        """Gate.admit (and ConnectionTable's membership) for every packet that reaches the gate."""
        a = self.a
        mg = len(gidx)
        for k in ("unsampled", "beyond_max_packets", "after_close", "after_idle", "sampled", NO_SYN):
            gc[k] = 0
        if mg == 0:
            return None
        # -- tuples ---------------------------------------------------------------------------------
        src_ep = cols.src[gidx] * 65536 + cols.sport[gidx]
        dst_ep = cols.dst[gidx] * 65536 + cols.dport[gidx]
        eps, inv = np.unique(np.concatenate((src_ep, dst_ep)), return_inverse=True)
        inv = inv.ravel()
        ne = len(eps)
        es, ed = inv[:mg], inv[mg:]
        key = es * ne + ed
        rkey = ed * ne + es
        del src_ep, dst_ep, eps, inv, es, ed
        order = np.argsort(key, kind="stable")  # sorted position -> gate-order index
        sk = key[order]
        first = np.empty(mg, dtype=bool)
        first[0] = True
        np.not_equal(sk[1:], sk[:-1], out=first[1:])
        rank = np.cumsum(first) - 1  # tuple rank per sorted position
        ukeys = sk[first]
        nk = len(ukeys)
        gfirst = np.nonzero(first)[0]
        # -- sampling: one keyed hash per unordered pair of endpoints ------------------------------
        sampler = a.gate.sampler
        if sampler.keep_all:
            samp_key = np.ones(nk, dtype=bool)
        else:
            rep = order[gfirst]
            ga = gidx[rep]
            pair = np.minimum(key[rep], rkey[rep])
            cache: dict[int, bool] = {}
            packed = cols.addresses.packed
            samp_key = np.empty(nk, dtype=bool)
            for i, (pk, g) in enumerate(zip(pair.tolist(), ga.tolist(), strict=True)):
                hit = cache.get(pk)
                if hit is None:
                    hit = cache[pk] = sampler.keep((packed(int(cols.src[g])), int(cols.sport[g]),
                                                    packed(int(cols.dst[g])), int(cols.dport[g])))
                samp_key[i] = hit
        samp = samp_key[rank]
        gc["unsampled"] = int((~samp).sum())
        # -- segments (sampled tuples) --------------------------------------------------------------
        gi_s = gidx[order]  # TCP column index per sorted position
        ts_s = ts_g[order]
        fl_s = cols.flags[gi_s].astype(np.int64)
        seq_s = cols.seq[gi_s]
        win_s = win_g[order]
        syn_s = is_syn(fl_s)
        pos = np.arange(mg, dtype=np.int64)
        group = first.copy()  # a tuple's packets of one window
        group[1:] |= win_s[1:] != win_s[:-1]
        gstart = np.maximum.accumulate(np.where(group, pos, 0))
        syn_at = np.maximum.accumulate(np.where(syn_s, pos, -1))
        prev_syn = np.empty(mg, dtype=np.int64)
        prev_syn[0] = -1
        prev_syn[1:] = syn_at[:-1]
        has_prev = prev_syn >= gstart
        cand = syn_s & (~has_prev | (seq_s != seq_s[np.maximum(prev_syn, 0)]))
        seg_head = group | cand
        heads = np.nonzero(seg_head)[0]
        seg_of = np.cumsum(seg_head) - 1
        k = pos - heads[seg_of]  # position within its segment
        is_conn_seg = syn_s[heads]  # a segment that opens with a SYN is a connection's
        conn_pk = is_conn_seg[seg_of]
        joined = conn_pk & (k < self.max_packets)
        end_pk = ends(fl_s)
        # ended before each packet (its segment's first RST/FIN came earlier), and the gap it closes
        first_end = _reduce(np.minimum, np.where(end_pk & joined, pos, mg), heads)
        ended_before = first_end[seg_of] < pos
        gap = ts_s - _before(_cummax_runs(ts_s, seg_head), seg_head, np.inf)
        # -- tuples the segment view cannot decide: replayed through core.table.track ------------
        bad = joined & (k > 0) & ended_before & (gap >= self.params.grace_s)
        if self.idle_mode:
            bad |= joined & (k > 0) & ~ended_before & (gap >= self.params.idle_s)
        seg_len = np.diff(np.r_[heads, mg])
        seg_ended = (_reduce(np.logical_or, end_pk & joined, heads) | (seg_len >= self.max_packets)) & is_conn_seg
        # a SYN that starts a segment although the previous connection of its window had not ended
        prev_open = np.zeros(len(heads), dtype=bool)
        prev_open[1:] = cand[heads[1:]] & ~group[heads[1:]] & ~seg_ended[:-1]
        bad[heads[prev_open]] = True
        bad &= samp
        bad_key = np.zeros(nk, dtype=bool)
        bad_key[rank[bad]] = True
        replay = bad_key[rank]
        simple = samp & ~replay
        # -- counters and connections of the simple tuples -----------------------------------------
        gc["sampled"] = int((simple & joined).sum())
        gc["beyond_max_packets"] = int((simple & conn_pk & ~joined).sum())
        no_syn_q = simple & ~conn_pk
        c_heads = heads[is_conn_seg & simple[heads]]
        c_lens = np.minimum(seg_len[is_conn_seg & simple[heads]], self.max_packets)
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
            cur_rank = -1
            head = cnt = -1
            for p, ts, fl, sq, w, rk in zip(rp.tolist(), ts_s[rp].tolist(), fl_s[rp].tolist(), seq_s[rp].tolist(),
                                            win_s[rp].tolist(), rank[rp].tolist(), strict=True):
                if rk != cur_rank:
                    st, cur_rank = None, rk
                o, st = track(st, ts, fl, sq, w, params)
                if o.step is Step.OPEN or o.step is Step.FINISH_OPEN:
                    if head >= 0:
                        r_heads.append(head)
                        r_lens.append(cnt)
                    head, cnt = p, 1
                    opens[p] = True
                elif o.step is Step.JOIN:
                    cnt += 1
                if o.counter == NO_SYN:
                    no_syn_q[p] = True
                elif o.counter:
                    counters[o.counter] = counters.get(o.counter, 0) + 1  # the gate's or the table's count
                if o.step is not Step.DROP:
                    gc["sampled"] += 1  # it leaves the gate (FINISH_DROP: to decide its connection in the table)
                    if o.step is Step.FINISH_DROP:
                        deciders.append(p)
            if head >= 0:
                r_heads.append(head)
                r_lens.append(cnt)
            for name, v in counters.items():
                gc[name] += v
        # -- packets without a connection: server-to-client when learnt from the reverse tuple ----
        no_syn = int(no_syn_q.sum())
        if not a.gate.direction.configured and no_syn:
            qpos = np.nonzero(no_syn_q)[0]
            jq = order[qpos]  # gate-order index of each query
            rk = rkey[jq]
            rr = np.searchsorted(ukeys, rk)
            rr_c = np.minimum(rr, nk - 1)
            exists = (rr < nk) & (ukeys[rr_c] == rk)
            op = np.nonzero(opens)[0]  # openings, sorted by (tuple rank, gate order)
            op_val = rank[op] * mg + order[op]
            at = np.searchsorted(op_val, rr_c * mg + jq, "left") - 1
            at_c = op[np.maximum(at, 0)] if len(op) else np.zeros(len(qpos), dtype=np.int64)
            ok = exists & (at >= 0) & (rank[at_c] == rr_c) & (win_s[at_c] == win_s[qpos])
            rev = int(ok.sum())
            gc["server_to_client"] += rev
            no_syn -= rev
        gc[NO_SYN] = no_syn
        all_heads = np.concatenate((c_heads, np.asarray(r_heads, dtype=np.int64)))
        all_lens = np.concatenate((c_lens, np.asarray(r_lens, dtype=np.int64)))
        srt = np.argsort(all_heads, kind="stable")
        conns = _Conns(all_heads[srt], all_lens[srt], gi_s, ts_s, fl_s, seq_s, win_s)
        # The per-packet table could emit a connection before a packet that joins it only when time goes
        # back by at least what that packet's gap leaves of its limit: check exactly when that may happen.
        back = float(np.max(np.maximum.accumulate(ts_g) - ts_g))
        if back > 0:
            limit = np.where(ended_before, self.params.grace_s, self.params.idle_s if self.idle_mode else np.inf)
            if bool(replay.any()) or bool(np.any(simple & joined & (k > 0) & (gap + back >= limit))):
                self._check_emission(conns, order, ts_s, np.asarray(deciders, dtype=np.int64))
        return conns

    def _check_emission(self, c: _Conns, order: I8, ts_s: F8, deciders: I8) -> None:
        """_Fallback when the per-packet table would have emitted a connection before a packet that
        joins it arrived (its watermark, from other tuples, already past the gap that packet closes)."""
        if not len(c.lens):
            return
        mg = len(order)
        p = c.pk  # sorted positions of joined packets
        g_ts = np.full(mg, -np.inf)  # what reaches the table, in input order
        g_ts[order[p]] = c.ts
        g_ts[order[deciders]] = ts_s[deciders]
        wm = np.maximum.accumulate(g_ts)
        wm_before = np.empty(mg)
        wm_before[0] = -np.inf
        wm_before[1:] = wm[:-1]
        wb = wm_before[order[p]]
        head_mask = c.k == 0
        last_prev = _before(_cummax_runs(c.ts, head_mask), head_mask, np.inf)
        ended_before = _count_before(ends(c.fl), head_mask) > 0
        limit = np.where(ended_before, self.params.grace_s, self.params.idle_s if self.idle_mode else np.inf)
        if bool(np.any(wb >= last_prev + limit)):
            raise _Fallback("the table's watermark passed a connection before its next packet")

    # -- decisions, classification, counting -------------------------------------------------------

    def _decide_and_count(self, cols: Columns, c: _Conns, tc: dict[str, int]) -> None:
        params = self.params
        h = c.heads_local
        fl = c.fl
        syns = _reduce(np.add, is_syn(fl).astype(np.int64), h)
        has_end = _reduce(np.logical_or, ends(fl), h)
        last = _reduce(np.maximum, c.ts, h)
        self.first = _reduce(np.minimum, c.ts, h)
        window = c.win[h]
        cutoff = np.minimum((window + self.size).astype(np.float64), cols.end_ts)
        decided = has_end | (c.lens >= self.max_packets)
        if self.idle_mode:
            decided |= cutoff - last >= params.idle_s
        code = exclusion_code(syns, decided, last, cutoff, params)
        for i, name in enumerate(EXCLUSIONS, 1):
            tc[name] += int((code == i).sum())
        ok = code == X_NONE
        has_rst = _reduce(np.logical_or, (fl & TH_RST) != 0, h)
        self._classify_columns(cols, c, ok & ~has_rst, last)
        for r in np.nonzero(ok & has_rst)[0].tolist():
            self._emit_reference(cols, c, r)

    def _classify_columns(self, cols: Columns, c: _Conns, sel: B1, last: F8) -> None:
        """Connections without an RST: the core's stage, timeout and scanner rules over columns."""
        if not sel.any():
            return
        h = c.heads_local
        fl = c.fl
        ti = c.ti
        pl = cols.payload[ti].astype(np.int64)
        ack = cols.ack[ti]
        seq = c.seq
        big = np.int64(1) << 40
        prog = shows_progress(fl, pl)
        data = prog & is_data(fl, pl)
        n_prog = _reduce(np.add, prog.astype(np.int64), h)
        n_data_any = _reduce(np.add, data.astype(np.int64), h)
        d_min = _reduce(np.minimum, np.where(data, seq, big), h)
        d_max = _reduce(np.maximum, np.where(data, seq, -1), h)
        n_data = np.where(n_data_any == 0, 0, np.where(d_min == d_max, 1, 2))  # distinct data segments: 0, 1, more
        one_ack = _reduce(np.minimum, np.where(prog, ack, big), h) == _reduce(np.maximum, np.where(prog, ack, -1), h)
        after = prog & seq_after(seq, d_min[c.run_of])
        nothing_after = ~_reduce(np.logical_or, after, h)
        has_fin = _reduce(np.logical_or, (fl & TH_FIN) != 0, h)
        timed = is_timeout(np.zeros(len(h), dtype=bool), has_fin, c.lens, self.max_packets)
        stage = np.where(timed, timeout_stage_code(n_prog, n_data, one_ack, nothing_after), S_NO_MATCH)
        syn = ti[h]  # the opening SYN (the only one: multi_syn connections are excluded)
        v4 = cols.version[syn] == 4
        scan = scanner_code(cols.window[syn].astype(np.int64), cols.ipid[syn].astype(np.int64),
                            cols.optlen[syn].astype(np.int64), cols.ttl[syn].astype(np.int64),
                            cols.version[syn].astype(np.int64), np.where(v4, cols.dst[syn], -1),
                            cols.dport[syn].astype(np.int64), cols.seq[syn])
        n_scan = len(SCANNER_LIST)
        codes = (stage * 2 + timed.astype(np.int64)) * n_scan + scan
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
        for g0, cnt in zip(gheads.tolist(), counts.tolist(), strict=True):
            v = self._verdict(int(scd[g0]))
            g = self._geo(cols, int(sc[g0]))
            self._count(int(sw[g0]), v, g.country, g.asn, cnt)

    def _verdict(self, code: int) -> Verdict:
        v = self.verdicts.get(code)
        if v is None:
            rest, scan = divmod(code, len(SCANNER_LIST))
            stage_i, timed = divmod(rest, 2)
            v = self.verdicts[code] = plain_verdict(STAGES[stage_i], bool(timed), SCANNER_LIST[scan])
        return v

    def _count(self, window: int, v: Verdict, country: str, asn: int, cnt: int) -> None:
        """Summary.count and Rollup.add for cnt identical records (what they read of a record)."""
        rec = {"window_start": window, "stage": v.stage, "tags": v.tags, "signature": v.signature,
               "scanner": v.scanner, "injected": v.injected, "evidence": v.evidence, "country": country, "asn": asn}
        self.a.summary.count(rec, cnt)
        self.a.rollup.add(rec, cnt)

    def _records(self, cols: Columns, c: _Conns, rows: I8, codes: I8, last: F8) -> None:
        sink = self.a.on_record
        assert sink is not None
        packed = cols.addresses.packed
        mode = self.params.mode
        for r in rows.tolist():
            i = int(c.ti[c.heads_local[r]])
            key = (packed(int(cols.src[i])), int(cols.sport[i]), packed(int(cols.dst[i])), int(cols.dport[i]))
            g = self._geo(cols, int(cols.src[i]))
            sink(build_record(key, int(c.win[c.heads_local[r]]), int(cols.seq[i]), float(self.first[r]),
                              float(last[r]), int(c.lens[r]), self._verdict(int(codes[r])), mode,
                              g.country, g.asn, g.as_name))

    def _emit_reference(self, cols: Columns, c: _Conns, r: int) -> None:
        """A connection with an RST, classified by the reference make_record."""
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


class _Conns:
    """The connections of a run as runs of sorted positions, and their packets' columns gathered
    so that the runs tile them (``heads_local``: where each connection starts there)."""

    def __init__(self, heads: I8, lens: I8, gi_s: I8, ts_s: F8, fl_s: I8, seq_s: I8, win_s: I8) -> None:
        self.lens = lens
        self.pk = _runs_index(heads, lens)  # sorted positions of the joined packets
        self.heads_local = np.cumsum(lens) - lens
        self.run_of = np.repeat(np.arange(len(heads), dtype=np.int64), lens)
        self.k = np.arange(len(self.pk), dtype=np.int64) - self.heads_local[self.run_of]
        self.ti = gi_s[self.pk]  # TCP column index of each
        self.ts = ts_s[self.pk]
        self.fl = fl_s[self.pk]
        self.seq = seq_s[self.pk]
        self.win = win_s[self.pk]


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
        total += size * (8 if compression(head) else 1)
    return total


def run(analyzer: Analyzer, paths: Iterable[Path]) -> bool:
    """Run the batch engine for an analyzer; False (nothing changed) when the per-packet path must decide."""
    paths = [Path(p) for p in paths]
    limit = int(os.environ.get("RSTSCOPE_BATCH_MAX_BYTES", BATCH_MAX_BYTES))
    if input_bytes(paths) > limit:
        return False
    return BatchRun(analyzer).run(paths)
