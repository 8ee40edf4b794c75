"""Verdicts over columns: the core's classification rules for many connections in one pass.

A connection without an RST (most of them) is classified by reductions over its packets: its stage,
whether it timed out, and its SYN's scanner mark, one integer code per connection (``plain_codes``),
which ``verdict`` turns into the core's ``plain_verdict``. Every decision calls a rule function of
``core.classify`` (``shows_progress``, ``is_data``, ``seq_after``, ``timeout_stage_code``,
``is_timeout``, ``scanner_code``); nothing here restates one. A connection with an RST goes through
the reference ``classify``.

Two shells use it: the batch engine on a slice's runs of packets, and the streaming worker on the
connections a checkpoint finished (``make_records``: what ``make_record`` gives for each, but one
numpy pass for the batch instead of ~6 µs of Python per connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from rstscope.config import EvidenceParams
from rstscope.core.classify import (
    S_NO_MATCH,
    SCANNERS,
    STAGES,
    Verdict,
    classify,
    is_data,
    is_timeout,
    plain_verdict,
    scanner_code,
    seq_after,
    shows_progress,
    timeout_stage_code,
)
from rstscope.core.record import ConnectionRecord, build_record
from rstscope.core.table import ROW_FIELDS, ROW_SIZE, Connection
from rstscope.fastpath.runs import reduce_runs
from rstscope.packet import TH_ACK, TH_FIN, TH_RST, TH_SYN, unpack_key

I8 = npt.NDArray[np.int64]
B1 = npt.NDArray[np.bool_]

SCANNER_LIST: tuple[str | None, ...] = (None, *SCANNERS)  # scanner_code 0: none
# a held connection's packet rows (core.table.ROW_FIELDS) as one numpy record each
ROW_DTYPE = np.dtype([(name, "<" + fmt) for name, fmt in ROW_FIELDS])
assert ROW_DTYPE.itemsize == ROW_SIZE
_BIG = np.int64(1) << 40  # above any sequence or acknowledgement number


def plain_codes(fl: Any, pl: I8, ack: I8, seq: I8, heads: I8, run_of: I8, lens: I8, scan: I8,
                max_packets: int) -> I8:
    """The verdict code of each connection, for those without an RST (a run of packets each: ``heads``
    where each starts, ``run_of`` the run of each packet; ``scan`` its SYN's ``scanner_code``).
    Packets are a set, as in ``classify``: their order within a run does not matter."""
    prog = shows_progress(fl, pl)
    data = prog & is_data(fl, pl)
    n_prog = reduce_runs(np.add, prog.astype(np.int64), heads)
    n_data_any = reduce_runs(np.add, data.astype(np.int64), heads)
    d_min = reduce_runs(np.minimum, np.where(data, seq, _BIG), heads)
    d_max = reduce_runs(np.maximum, np.where(data, seq, -1), heads)
    n_data = np.where(n_data_any == 0, 0, np.where(d_min == d_max, 1, 2))  # distinct data segments: 0, 1, more
    one_ack = (reduce_runs(np.minimum, np.where(prog, ack, _BIG), heads)
               == reduce_runs(np.maximum, np.where(prog, ack, -1), heads))
    after = prog & seq_after(seq, d_min[run_of])
    nothing_after = ~reduce_runs(np.logical_or, after, heads)
    has_fin = reduce_runs(np.logical_or, (fl & TH_FIN) != 0, heads)
    timed = is_timeout(np.zeros(len(heads), dtype=bool), has_fin, lens, max_packets)
    stage = np.where(timed, timeout_stage_code(n_prog, n_data, one_ack, nothing_after), S_NO_MATCH)
    out: I8 = (stage * 2 + timed.astype(np.int64)) * len(SCANNER_LIST) + scan
    return out


@cache  # 5 stages x 2 x 6 marks at most
def verdict(code: int) -> Verdict:
    """The verdict a ``plain_codes`` code stands for."""
    rest, scan = divmod(code, len(SCANNER_LIST))
    stage, timed = divmod(rest, 2)
    return plain_verdict(STAGES[stage], bool(timed), SCANNER_LIST[scan])


def held_verdicts(conns: Sequence[Connection], keys: Sequence[tuple[bytes, int, bytes, int]], max_packets: int,
                  evidence: EvidenceParams) -> list[Verdict]:
    """``classify`` of each held connection's packets (``keys``: their 4-tuples): in columns when it
    has no RST and one SYN (then that SYN is the one whose scanner mark counts), else the reference."""
    n = len(conns)
    lens = np.fromiter((len(c.body) for c in conns), np.int64, n) // ROW_SIZE
    out: list[Verdict | None] = [None] * n
    if n and lens.all():
        rows = np.frombuffer(b"".join(c.body for c in conns), ROW_DTYPE)
        heads = np.cumsum(lens) - lens
        fl = rows["flags"]
        run_of = np.repeat(np.arange(n, dtype=np.int64), lens)
        syn = (fl & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN  # classify's SYNs: its ordinary packets with SYN, no ACK
        has_rst = reduce_runs(np.logical_or, (fl & TH_RST) != 0, heads)
        n_syn = reduce_runs(np.add, syn.astype(np.int64), heads)
        s = reduce_runs(np.maximum, np.where(syn, np.arange(len(rows), dtype=np.int64), -1), heads)
        s = np.maximum(s, 0)  # the SYN's row (used only where there is exactly one)
        v4 = np.fromiter((len(k[0]) == 4 for k in keys), bool, n)
        dst = np.fromiter((int.from_bytes(k[2], "big") if len(k[2]) == 4 else -1 for k in keys), np.int64, n)
        dport = np.fromiter((k[3] for k in keys), np.int64, n)
        i64 = np.int64
        scan = scanner_code(rows["window"][s].astype(i64), rows["ipid"][s].astype(i64),
                            rows["opt_len"][s].astype(i64), rows["ttl"][s].astype(i64),
                            np.where(v4, 4, 6), dst, dport, rows["seq"][s].astype(i64))
        codes = plain_codes(fl, rows["payload_len"].astype(i64), rows["ack"].astype(i64),
                            rows["seq"].astype(i64), heads, run_of, lens, scan, max_packets)
        for i in np.nonzero(~has_rst & (n_syn == 1))[0].tolist():
            out[i] = verdict(int(codes[i]))
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
