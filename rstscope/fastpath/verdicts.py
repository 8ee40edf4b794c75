"""Verdicts over columns: the core's classification rules for many connections in one pass.

A connection without an RST (most of them) is classified by reductions over its packets: its stage,
whether it timed out, and its SYN's scanner mark, one integer code per connection (``plain_codes``),
which ``verdict`` turns into the core's ``plain_verdict``. A reset connection is classified the same
way (``reset_verdicts``: its stage, composition, ack numbers, evidence basis, TTL and IP ID deltas,
gfw_type1, injected). Every decision calls a rule function of ``core.classify`` (``shows_progress``,
``is_data``, ``seq_after``, ``timeout_stage_code``, ``is_timeout``, ``scanner_code``,
``reset_stage_code``, ``composition_code``, ``acknum_code``, ``basis_code``, ``range_distance``,
``circular``, ``gfw_type1_rst``, ``injected_code``); nothing here restates one. What columns do not
serve goes through the reference ``classify``: several SYNs, or three RST+ACKs or more (gfw_type2's set
rule).

Two shells use it: the batch engine on a slice's runs of packets, and the streaming worker on the
connections a checkpoint finished (``make_records``: what ``make_record`` gives for each, but one
numpy pass for the batch instead of ~6 µs of Python per connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, cached_property
from typing import Any

import numpy as np

from rstscope.config import EvidenceParams
from rstscope.core.classify import (
    B_SCANNER,
    C_MULTIPLE_RSTS,
    EVIDENCE_BASES,
    NO_DELTA,
    S_NO_MATCH,
    SCANNERS,
    STAGES,
    Verdict,
    acknum_code,
    basis_code,
    circular,
    classify,
    composition_code,
    gfw_type1_rst,
    injected_code,
    is_data,
    is_timeout,
    plain_verdict,
    range_distance,
    reset_stage_code,
    reset_verdict_tags,
    scanner_code,
    seq_after,
    shows_progress,
    signature,
    timeout_stage_code,
)
from rstscope.core.record import ConnectionRecord, build_record
from rstscope.core.table import ROW_FIELDS, ROW_SIZE, Connection
from rstscope.fastpath.runs import B1, I8, reduce_runs, runs_index
from rstscope.packet import TH_ACK, TH_FIN, TH_RST, TH_SYN, unpack_key

SCANNER_LIST: tuple[str | None, ...] = (None, *SCANNERS)  # scanner_code 0: none
# a held connection's packet rows (core.table.ROW_FIELDS) as one numpy record each
ROW_DTYPE = np.dtype([(name, "<" + fmt) for name, fmt in ROW_FIELDS])
assert ROW_DTYPE.itemsize == ROW_SIZE
_BIG = np.int64(1) << 40  # above any sequence or acknowledgement number


def progress(fl: Any, pl: I8, seq: I8, heads: I8) -> tuple[B1, I8, I8, I8]:
    """What ``stage_code`` reads of each run's packets: which show progress, how many do, how many
    distinct data segments they hold (0, 1, or 2 for more) and the lowest one's sequence number."""
    prog = shows_progress(fl, pl)
    data = prog & is_data(fl, pl)
    n_prog = reduce_runs(np.add, prog.astype(np.int64), heads)
    n_data_any = reduce_runs(np.add, data.astype(np.int64), heads)
    d_min = reduce_runs(np.minimum, np.where(data, seq, _BIG), heads)
    d_max = reduce_runs(np.maximum, np.where(data, seq, -1), heads)
    n_data = np.where(n_data_any == 0, 0, np.where(d_min == d_max, 1, 2))
    return prog, n_prog, n_data, d_min


def plain_codes(r: Rows, scan: I8, max_packets: int) -> I8:
    """The verdict code of each connection, for those without an RST (``scan``: its SYN's
    ``scanner_code``). Packets are a set, as in ``classify``: their order within a run does not matter."""
    fl, ack, seq, heads = r.fl, r.ack, r.seq, r.heads
    prog, n_prog, n_data, d_min = r.progress
    one_ack = (reduce_runs(np.minimum, np.where(prog, ack, _BIG), heads)
               == reduce_runs(np.maximum, np.where(prog, ack, -1), heads))
    after = prog & seq_after(seq, d_min[r.run_of])
    nothing_after = ~reduce_runs(np.logical_or, after, heads)
    has_fin = reduce_runs(np.logical_or, (fl & TH_FIN) != 0, heads)
    timed = is_timeout(np.zeros(len(heads), dtype=bool), has_fin, r.lens, max_packets)
    stage = np.where(timed, timeout_stage_code(n_prog, n_data, one_ack, nothing_after), S_NO_MATCH)
    out: I8 = (stage * 2 + timed.astype(np.int64)) * len(SCANNER_LIST) + scan
    return out


@cache  # 5 stages x 2 x 6 marks at most
def verdict(code: int) -> Verdict:
    """The verdict a ``plain_codes`` code stands for."""
    rest, scan = divmod(code, len(SCANNER_LIST))
    stage, timed = divmod(rest, 2)
    return plain_verdict(STAGES[stage], bool(timed), SCANNER_LIST[scan])


class Rows:
    """Connections as runs of packet rows: ``heads`` where each starts, ``lens`` how many rows it has,
    ``run_of`` the run of each row, and the columns the rules read (int64, flags as they come)."""

    def __init__(self, lens: I8, fl: Any, seq: Any, ack: Any, pl: Any, ttl: Any, ipid: Any, window: Any,
                 opt_len: Any) -> None:
        i64 = np.int64
        self.lens = lens
        self.heads = np.cumsum(lens) - lens
        self.run_of = np.repeat(np.arange(len(lens), dtype=i64), lens)
        self.fl = fl
        self.seq, self.ack, self.pl = seq.astype(i64), ack.astype(i64), pl.astype(i64)
        self.ttl, self.ipid = ttl.astype(i64), ipid.astype(i64)
        self.window, self.opt_len = window.astype(i64), opt_len.astype(i64)

    @classmethod
    def held(cls, conns: Sequence[Connection]) -> Rows:
        """The rows of held connections (their packed bodies, ``ROW_DTYPE``)."""
        lens = np.fromiter((len(c.body) for c in conns), np.int64, len(conns)) // ROW_SIZE
        rows = np.frombuffer(b"".join(c.body for c in conns), ROW_DTYPE)
        return cls(lens, rows["flags"], rows["seq"], rows["ack"], rows["payload_len"], rows["ttl"], rows["ipid"],
                   rows["window"], rows["opt_len"])

    @cached_property
    def progress(self) -> tuple[B1, I8, I8, I8]:
        """``progress`` of the runs (both rule sets read it: computed once)."""
        return progress(self.fl, self.pl, self.seq, self.heads)

    def any(self, mask: B1) -> B1:
        out: B1 = reduce_runs(np.logical_or, mask, self.heads)
        return out

    def count(self, mask: B1) -> I8:
        out: I8 = reduce_runs(np.add, mask.astype(np.int64), self.heads)
        return out

    def lowest(self, mask: B1, v: I8) -> I8:
        out: I8 = reduce_runs(np.minimum, np.where(mask, v, _BIG), self.heads)
        return out

    def highest(self, mask: B1, v: I8) -> I8:
        out: I8 = reduce_runs(np.maximum, np.where(mask, v, -1), self.heads)
        return out


def in_columns(r: Rows) -> B1:
    """The reset connections ``reset_verdicts`` serves: fewer than three RST+ACKs (gfw_type2, a rule over
    the set of their sequence numbers, needs three: the reference decides those)."""
    out: B1 = r.count(((r.fl & TH_RST) != 0) & ((r.fl & TH_ACK) != 0)) < 3
    return out


def reset_verdicts(r: Rows, sel: I8, scan: I8, ev: EvidenceParams) -> list[Verdict]:
    """``classify`` of the reset connections ``sel`` (runs with an RST, one SYN and at most two RST+ACKs:
    gfw_type2 needs three), whose SYN's ``scanner_code`` is ``scan``."""
    fl, run_of = r.fl, r.run_of
    rst = (fl & TH_RST) != 0
    ordinary = ~rst  # never empty here: the SYN is one
    plain = rst & ((fl & TH_ACK) == 0)
    has_fin = r.any(ordinary & ((fl & TH_FIN) != 0))
    n_plain = r.count(plain)
    comp = composition_code(n_plain, r.count(rst) - n_plain)
    lo_ack, hi_ack = r.lowest(plain, r.ack), r.highest(plain, r.ack)
    ackc = np.where(comp == C_MULTIPLE_RSTS, acknum_code(lo_ack == hi_ack, lo_ack == 0), 0)
    basis = basis_code(scan > 0, r.any(ordinary & ((fl & TH_SYN) == 0)))
    lo, hi = r.lowest(ordinary, r.ttl)[run_of], r.highest(ordinary, r.ttl)[run_of]
    ttl_delta = r.highest(rst, range_distance(r.ttl, lo, hi))
    gfw1 = (basis != B_SCANNER) & r.any(plain & gfw_type1_rst(r.window, r.ttl, lo, hi, ev.injected_ttl_delta))
    ipid_delta = _ipid_deltas(r, rst & np.isin(run_of, sel))
    _, n_prog, n_data, _ = r.progress
    stage = reset_stage_code(n_prog, n_data)
    injected = injected_code(basis, ttl_delta, ipid_delta, ev)
    out = []
    for i in sel.tolist():
        sc, st = int(scan[i]), int(stage[i])
        tags = reset_verdict_tags(bool(has_fin[i]), int(comp[i]), int(ackc[i]), bool(gfw1[i]), False,
                                  SCANNER_LIST[sc] == "zmap")
        name = STAGES[st]
        ipd = int(ipid_delta[i])
        out.append(Verdict(name, tags, signature(name, False, tags) if st != S_NO_MATCH else None,
                           int(ttl_delta[i]), None if ipd == NO_DELTA else ipd, bool(injected[i]), SCANNER_LIST[sc],
                           EVIDENCE_BASES[int(basis[i])]))
    return out


def _ipid_deltas(r: Rows, rsts: B1) -> I8:
    """``evidence``'s ipid_delta of each run from its RSTs ``rsts``: the largest distance (mod 2^16) of an
    RST's IP ID from the nearest IP ID of the run's ordinary packets; NO_DELTA without both."""
    ipid = r.ipid
    mine = np.nonzero(rsts & (ipid >= 0))[0]  # the RSTs with an IP ID, each against every row of its run
    runs = r.run_of[mine]
    width = r.lens[runs]
    other = runs_index(r.heads[runs], width)
    owner = np.repeat(np.arange(len(mine), dtype=np.int64), width)
    ok = ((r.fl[other] & TH_RST) == 0) & (ipid[other] >= 0)
    nearest = np.full(len(mine), _BIG, dtype=np.int64)
    np.minimum.at(nearest, owner[ok], circular(ipid[mine][owner[ok]], ipid[other[ok]]))
    out = np.full(len(r.lens), NO_DELTA, dtype=np.int64)
    has = nearest < _BIG
    np.maximum.at(out, runs[has], nearest[has])
    return out


def held_verdicts(conns: Sequence[Connection], keys: Sequence[tuple[bytes, int, bytes, int]], max_packets: int,
                  evidence: EvidenceParams) -> list[Verdict]:
    """``classify`` of each held connection's packets (``keys``: their 4-tuples): in columns when it
    has one SYN (then that SYN is the one whose scanner mark counts) and fewer than three RST+ACKs,
    else the reference."""
    n = len(conns)
    out: list[Verdict | None] = [None] * n
    if n and all(c.body for c in conns):
        r = Rows.held(conns)
        fl = r.fl
        syn = (fl & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN  # classify's SYNs: its ordinary packets with SYN, no ACK
        rst = (fl & TH_RST) != 0
        has_rst = r.any(rst)
        one_syn = r.count(syn) == 1
        s = np.maximum(r.highest(syn, np.arange(len(fl), dtype=np.int64)), 0)  # the SYN's row (if one)
        v4 = np.fromiter((len(k[0]) == 4 for k in keys), bool, n)
        dst = np.fromiter((int.from_bytes(k[2], "big") if len(k[2]) == 4 else -1 for k in keys), np.int64, n)
        dport = np.fromiter((k[3] for k in keys), np.int64, n)
        scan = scanner_code(r.window[s], r.ipid[s], r.opt_len[s], r.ttl[s], np.where(v4, 4, 6), dst, dport, r.seq[s])
        codes = plain_codes(r, scan, max_packets)
        for i in np.nonzero(~has_rst & one_syn)[0].tolist():
            out[i] = verdict(int(codes[i]))
        resets = np.nonzero(has_rst & one_syn & in_columns(r))[0]
        if len(resets):
            for i, v in zip(resets.tolist(), reset_verdicts(r, resets, scan, evidence), strict=True):
                out[i] = v
    return [v if v is not None else classify(c.records(k), max_packets, evidence)
            for c, k, v in zip(conns, keys, out, strict=True)]


def make_records(conns: Sequence[Connection], places: Sequence[tuple[str, int, str]], max_packets: int,
                 evidence: EvidenceParams, mode: str) -> list[ConnectionRecord]:
    """``make_record`` for many finished connections (``places``: each client's country, asn, as_name)."""
    keys = [unpack_key(c.pkey) for c in conns]
    verdicts = held_verdicts(conns, keys, max_packets, evidence)
    return [build_record(k, c.window_start, c.syn_seq, c.first_ts, c.last_ts, len(c.body) // ROW_SIZE, v, mode,
                         *place, c.pkey)
            for c, k, v, place in zip(conns, keys, verdicts, places, strict=True)]
