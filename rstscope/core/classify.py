"""Classification of one finished connection: stage, tags, signature, injection evidence, scanner.

Pure functions of the connection's client packets, taken as a *set*: capture timestamps can be coarse,
so nothing here depends on the order packets arrived in; where order matters ("the last packet"), it
is recovered from TCP sequence numbers. docs/method.md states each rule and the test that pins it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from rstscope.config import EvidenceParams
from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, PacketRecord

POST_SYN = "post_syn"
POST_ACK = "post_ack"
POST_PSH = "post_psh"
LATER = "later_in_flow"
NO_MATCH = "no_match"
STAGES = (POST_SYN, POST_ACK, POST_PSH, LATER, NO_MATCH)

# SPEC section 5, in its order; a nested tag applies only when its parent does.
TAGS = (
    "timeout", "reset", "fin", "single_rst", "multiple_rsts", "acknumsame", "acknumsame0",
    "acknumdiff", "acknumdiff0", "single_rstack", "multiple_rstacks", "rst_and_rstacks",
    "gfw_type1", "gfw_type2", "zmap",
)

# The 19 tampering signatures of Sundara Raman et al. (SIGCOMM 2023), per stage.
SIGNATURES = (
    "SYN→∅", "SYN→RST", "SYN→RST+ACK", "SYN→RST;RST+ACK",
    "SYN;ACK→∅", "SYN;ACK→RST", "SYN;ACK→RST;RST", "SYN;ACK→RST+ACK", "SYN;ACK→RST+ACK;RST+ACK",
    "PSH+ACK→∅", "PSH+ACK→RST", "PSH+ACK→RST+ACK", "PSH+ACK→RST;RST+ACK", "PSH+ACK→RST+ACK;RST+ACK",
    "PSH+ACK→RST=RST", "PSH+ACK→RST≠RST", "PSH+ACK→RST;RST0",
    "PSH+ACK;Data→RST", "PSH+ACK;Data→RST+ACK",
)

SCANNERS = ("zmap", "masscan", "mirai", "nmap", "generic")
ZMAP_IPID = 54321
ZMAP_WINDOW = 65535
ZMAP_MAX_OPT_LEN = 4  # from 4.1 the IP ID is random; the SYN keeps window 65535 and at most an MSS option
MASSCAN_WINDOWS = frozenset((1024, 1025))
NMAP_WINDOWS = frozenset((1024, 2048, 3072, 4096))  # nmap's raw SYN probes
NMAP_OPT_LEN = 4  # ... carry exactly one option, the MSS (4 bytes)
GENERIC_MIN_TTL = 200

# What the TTL / IP ID evidence of a reset connection rests on (the record's ``evidence`` field).
EVIDENCE_NONE = None  # no RST: nothing to compare
EVIDENCE_PACKETS = "packets"  # the RSTs compared with the client's ordinary packets after its SYN
EVIDENCE_SYN_ONLY = "syn_only"  # the only ordinary packet is the SYN: a different stack (a crafted SYN,
#   a SYN proxy) explains a difference as well as an injector does; a reading, not a verdict
EVIDENCE_SCANNER = "scanner"  # the SYN is a scanner's: the spread is the scanner's, never "injected"
EVIDENCE_BASES = (EVIDENCE_PACKETS, EVIDENCE_SYN_ONLY, EVIDENCE_SCANNER)  # basis_code indexes it
SEQ_HALF = 1 << 31
SEQ_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a connection was: its stage, tags, signature, and the evidence behind them."""

    stage: str
    tags: tuple[str, ...]
    signature: str | None
    ttl_delta: int | None
    ipid_delta: int | None
    injected: bool
    scanner: str | None
    evidence: str | None  # EVIDENCE_*: what ttl_delta / ipid_delta and injected rest on


def where(cond: Any, a: Any, b: Any) -> Any:
    """``a if cond else b`` for Python scalars, elementwise for numpy arrays: the rules below are
    written once and serve one connection (classify) and a column of them (the batch engine) alike."""
    if isinstance(cond, np.ndarray):
        return np.where(cond, a, b)
    return a if cond else b


def one_of(v: Any, values: frozenset[int]) -> Any:
    """``v in values`` for a scalar, elementwise for a numpy array."""
    if isinstance(v, np.ndarray):
        return np.isin(v, np.fromiter(values, np.int64, len(values)))
    return v in values


def seq_after(a: Any, b: Any) -> Any:
    """a comes after b in sequence space (RFC 1982 serial arithmetic); ints or numpy arrays."""
    d = (a - b) % SEQ_MOD
    return (d > 0) & (d < SEQ_HALF)


def is_data(flags: Any, payload_len: Any) -> Any:
    """A data packet: PSH set or a payload (ints or numpy arrays)."""
    return ((flags & TH_PSH) != 0) | (payload_len > 0)


def shows_progress(flags: Any, payload_len: Any) -> Any:
    """A non-RST packet that shows progress past the SYN: not a SYN, and an ACK or data. A packet
    without the ACK flag (a bare FIN) shows none."""
    return ((flags & (TH_SYN | TH_RST)) == 0) & (((flags & TH_ACK) != 0) | is_data(flags, payload_len))


# Stage codes: indices into STAGES.
S_POST_SYN, S_POST_ACK, S_POST_PSH, S_LATER, S_NO_MATCH = range(5)


def reset_stage_code(n_progress: Any, n_data: Any) -> Any:
    """Stage of a reset connection from the progress its non-RST packets show: only the SYN ->
    Post-SYN; ACKs but no data -> Post-ACK; one data segment -> Post-PSH; more -> Later."""
    return where(n_data > 1, S_LATER, where(n_data == 1, S_POST_PSH, where(n_progress > 0, S_POST_ACK, S_POST_SYN)))


def timeout_stage_code(n_progress: Any, n_data: Any, one_ack: Any, nothing_after_data: Any) -> Any:
    """Stage of a timed-out connection: what its last packet was (order from sequence numbers).

    Only SYNs -> Post-SYN. No data: Post-ACK when every ACK is the handshake ACK (one acknowledgement
    number throughout); a client that acknowledged server data and went quiet is idle (None). One
    data segment and nothing after it (retransmissions allowed) -> Post-PSH. Anything else: None.
    """
    return where(n_progress == 0, S_POST_SYN,
                 where(n_data == 0, where(one_ack, S_POST_ACK, S_NO_MATCH),
                       where((n_data == 1) & nothing_after_data, S_POST_PSH, S_NO_MATCH)))


def is_timeout(has_rst: Any, has_fin: Any, n_packets: Any, max_packets: int) -> Any:
    """A classified connection timed out when nothing ended it: no RST, no FIN, fewer than
    max_packets packets (bools/ints or numpy arrays). Which of these are timeouts rather than
    ``incomplete`` was decided at the cutoff (core.table.exclusion)."""
    return (has_rst == 0) & (has_fin == 0) & (n_packets < max_packets)


def stage_code(packets: Sequence[PacketRecord], rsts: Sequence[PacketRecord], timed_out: bool) -> int:
    """The stage of one connection (packets as a set)."""
    prog = [p for p in packets if shows_progress(p.flags, p.payload_len)]
    data_seqs = {p.seq for p in prog if is_data(p.flags, p.payload_len)}
    if rsts:
        return int(reset_stage_code(len(prog), len(data_seqs)))
    if not timed_out:
        return S_NO_MATCH
    first = min(data_seqs) if len(data_seqs) == 1 else 0
    after = len(data_seqs) == 1 and any(seq_after(p.seq, first) for p in prog)
    return int(timeout_stage_code(len(prog), len(data_seqs), len({p.ack for p in prog}) == 1, not after))


# Named middleboxes (issue 16; docs/signatures.md cites each): tags nested under ``reset``.
# gfw_type2: the GFW's RST+ACKs come in threes at X, X+1460 and X+4380 (Clayton, Murdoch, Watson,
# PET 2006, p. 4; "type-2", RST+ACK, in Wang et al., IMC 2017).
GFW_TYPE2_OFFSETS = (1460, 4380)
# gfw_type1: the GFW's RST without ACK has a random TTL and a random window (Wang et al., IMC 2017),
# where a host's own RST without ACK carries window 0 (Linux's tcp_v4/v6_send_reset); any non-zero counts.
GFW_TYPE1_MIN_WINDOW = 1


def gfw_type2(rstack_seqs: Sequence[int]) -> bool:
    """Three RST+ACKs whose sequence numbers are X, X+1460 and X+4380 (mod 2^32) for one of them X:
    only the offsets are the fingerprint, wherever the injector puts X (Clayton et al.: the trigger's first byte)."""
    seqs = set(rstack_seqs)
    return any(all((x + d) % SEQ_MOD in seqs for d in GFW_TYPE2_OFFSETS) for x in seqs)


def gfw_type1_rst(window: Any, ttl: Any, lo: Any, hi: Any, min_ttl_delta: int) -> Any:
    """One RST without ACK fits the type-1 injector: a non-zero window, and a TTL ``min_ttl_delta`` or
    more outside the client's own TTLs [lo, hi] (ints or numpy arrays)."""
    return (window >= GFW_TYPE1_MIN_WINDOW) & (range_distance(ttl, lo, hi) >= min_ttl_delta)


def gfw_type1(plain_rsts: Sequence[PacketRecord], ordinary_ttls: Sequence[int], min_ttl_delta: int) -> bool:
    """An RST without ACK whose window is non-zero and whose TTL lies ``min_ttl_delta`` or more outside
    the client's own TTLs: a random window alone is what some stacks do too, a foreign TTL alone is
    any injector; both together are the type-1 injector's documented pair."""
    if not ordinary_ttls:
        return False
    lo, hi = min(ordinary_ttls), max(ordinary_ttls)
    return any(gfw_type1_rst(p.window, p.ttl, lo, hi, min_ttl_delta) for p in plain_rsts)


# The composition of a reset: exactly one of these applies (SPEC section 5).
RST_COMPOSITIONS = ("single_rst", "multiple_rsts", "single_rstack", "multiple_rstacks", "rst_and_rstacks")
C_SINGLE_RST, C_MULTIPLE_RSTS, C_SINGLE_RSTACK, C_MULTIPLE_RSTACKS, C_BOTH = range(5)
# How the ack numbers of several RSTs (without ACK) relate.
ACKNUM_TAGS = ("acknumsame", "acknumsame0", "acknumdiff", "acknumdiff0")


def composition_code(n_plain: Any, n_rstack: Any) -> Any:
    """The composition (index in RST_COMPOSITIONS) of a reset with ``n_plain`` RSTs without ACK and
    ``n_rstack`` RST+ACKs (ints or numpy arrays)."""
    return where((n_plain > 0) & (n_rstack > 0), C_BOTH,
                 where(n_plain == 1, C_SINGLE_RST, where(n_plain > 1, C_MULTIPLE_RSTS,
                                                         where(n_rstack == 1, C_SINGLE_RSTACK, C_MULTIPLE_RSTACKS))))


def acknum_code(all_same: Any, any_zero: Any) -> Any:
    """The ack numbers of the RSTs without ACK (index in ACKNUM_TAGS): all the same (``acknumsame``) or
    not (``acknumdiff``), with a ``0`` suffix when one of them is 0 (ints/bools or numpy arrays)."""
    return where(all_same, 0, 2) + where(any_zero, 1, 0)


@cache  # 2 x 5 x 4 at most
def reset_tag_list(has_fin: bool, composition: int, acknum: int) -> tuple[str, ...]:
    """``reset`` and its nested tags, in TAGS order: ``fin``, then the composition; the ``acknum*`` tag
    applies under ``multiple_rsts`` only."""
    tags = ("reset", "fin", RST_COMPOSITIONS[composition]) if has_fin else ("reset", RST_COMPOSITIONS[composition])
    return (*tags, ACKNUM_TAGS[acknum]) if composition == C_MULTIPLE_RSTS else tags


@cache  # 2 x 5 x 4 x 2 x 2 x 2 at most
def reset_verdict_tags(has_fin: bool, composition: int, acknum: int, gfw1: bool, gfw2: bool,
                       zmap: bool) -> tuple[str, ...]:
    """All tags of a reset connection, in TAGS order: ``reset_tag_list``, the named middleboxes, ``zmap``."""
    return (reset_tag_list(has_fin, composition, acknum) + (("gfw_type1",) if gfw1 else ())
            + (("gfw_type2",) if gfw2 else ()) + (("zmap",) if zmap else ()))


def reset_codes(rsts: Sequence[PacketRecord]) -> tuple[int, int]:
    """The composition and the ``acknum_code`` (0 unless ``multiple_rsts``) of these RSTs."""
    acks = [p.ack for p in rsts if not p.flags & TH_ACK]  # one per RST without ACK
    comp = int(composition_code(len(acks), len(rsts) - len(acks)))
    return comp, int(acknum_code(len(set(acks)) == 1, 0 in acks)) if comp == C_MULTIPLE_RSTS else 0


def signature(stage: str, timed_out: bool, tags: Sequence[str]) -> str | None:
    """The paper's signature, from the stage and the kinds and numbers of RSTs; None if none fits."""
    if "fin" in tags:
        return None
    if timed_out:
        return {POST_SYN: "SYN→∅", POST_ACK: "SYN;ACK→∅", POST_PSH: "PSH+ACK→∅"}.get(stage)
    if "reset" not in tags:
        return None
    both = "rst_and_rstacks" in tags
    rst = "single_rst" in tags or "multiple_rsts" in tags
    rstack = "single_rstack" in tags or "multiple_rstacks" in tags
    if stage == POST_SYN:
        return "SYN→RST;RST+ACK" if both else "SYN→RST" if rst else "SYN→RST+ACK"
    if stage == POST_ACK:
        if both:
            return None
        if rst:
            return "SYN;ACK→RST" if "single_rst" in tags else "SYN;ACK→RST;RST"
        return "SYN;ACK→RST+ACK" if "single_rstack" in tags else "SYN;ACK→RST+ACK;RST+ACK"
    if stage == POST_PSH:
        if both:
            return "PSH+ACK→RST;RST+ACK"
        if rstack:
            return "PSH+ACK→RST+ACK" if "single_rstack" in tags else "PSH+ACK→RST+ACK;RST+ACK"
        if "single_rst" in tags:
            return "PSH+ACK→RST"
        if "acknumsame" in tags or "acknumsame0" in tags:
            return "PSH+ACK→RST=RST"
        return "PSH+ACK→RST≠RST" if "acknumdiff" in tags else "PSH+ACK→RST;RST0"
    if stage == LATER and not both:
        return "PSH+ACK;Data→RST" if rst else "PSH+ACK;Data→RST+ACK"
    return None


def range_distance(v: Any, lo: Any, hi: Any) -> Any:
    """How far ``v`` lies outside [lo, hi] (0 inside); ints or numpy arrays."""
    return where(v < lo, lo - v, where(v > hi, v - hi, 0))


def circular(a: Any, b: Any) -> Any:
    """The distance of two IP IDs mod 2^16 (ints or numpy arrays)."""
    d = (a - b) & 0xFFFF
    return where(d < 0x10000 - d, d, 0x10000 - d)


def evidence(rsts: Sequence[PacketRecord], ordinary: Sequence[PacketRecord]) -> tuple[int | None, int | None]:
    """How far the RSTs' TTL and IP ID lie from the client's ordinary packets.

    ttl_delta: the largest distance of an RST's TTL from the range of the ordinary packets' TTLs.
    ipid_delta: the largest distance (mod 2^16) of an RST's IP ID from the nearest ordinary IP ID.
    A host's own RSTs stay within 1 of its other packets; a middlebox's injected ones rarely do.
    """
    if not rsts or not ordinary:
        return None, None
    ttls = [p.ttl for p in ordinary]
    lo, hi = min(ttls), max(ttls)
    ttl_delta = max(range_distance(r.ttl, lo, hi) for r in rsts)
    ids = [p.ipid for p in ordinary if p.ipid is not None]
    rst_ids = [r.ipid for r in rsts if r.ipid is not None]
    ipid_delta = max(min(circular(r, o) for o in ids) for r in rst_ids) if ids and rst_ids else None
    return ttl_delta, ipid_delta


def scanner_code(window: Any, ipid: Any, opt_len: Any, ttl: Any, version: Any, dst_v4: Any, dport: Any,
                 seq: Any) -> Any:
    """Which scanner made a SYN, from its header fields (SPEC section 5): 0 none, else 1 + its index
    in SCANNERS; the first match wins. ``ipid`` is -1 without one (IPv6), ``dst_v4`` the destination
    IPv4 address as an integer. Ints or numpy arrays."""
    v4 = (version == 4) & (ipid >= 0)
    zmap = (window == ZMAP_WINDOW) & ((ipid == ZMAP_IPID) | (opt_len <= ZMAP_MAX_OPT_LEN))
    masscan = v4 & one_of(window, MASSCAN_WINDOWS) & (ipid == ((dst_v4 ^ dport ^ seq) & 0xFFFF))
    mirai = v4 & (seq == dst_v4)
    nmap = one_of(window, NMAP_WINDOWS) & (opt_len == NMAP_OPT_LEN)
    generic = (opt_len == 0) & (ttl >= GENERIC_MIN_TTL)
    return where(zmap, 1, where(masscan, 2, where(mirai, 3, where(nmap, 4, where(generic, 5, 0)))))


def scanner_mark(syn: PacketRecord) -> str | None:
    """Which scanner made this SYN, judged from its header fields (SPEC section 5)."""
    dst = int.from_bytes(syn.dst, "big") if syn.version == 4 else 0
    ipid = -1 if syn.ipid is None else syn.ipid
    code = int(scanner_code(syn.window, ipid, syn.opt_len, syn.ttl, syn.version, dst, syn.dport, syn.seq))
    return SCANNERS[code - 1] if code else None


@cache  # at most 5 stages x 2 x 6 marks; most connections end here, and a Verdict is immutable
def plain_verdict(stage: str, timed_out: bool, mark: str | None) -> Verdict:
    """The verdict of a connection without RSTs: a timeout or nothing, and the scanner's mark."""
    tags = ["timeout"] if timed_out else []
    if mark == "zmap":
        tags.append("zmap")
    sig = signature(stage, timed_out, tags) if stage != NO_MATCH else None
    return Verdict(stage, tuple(tags), sig, None, None, False, mark, EVIDENCE_NONE)


def classify(packets: Sequence[PacketRecord], max_packets: int = 10,
             params: EvidenceParams | None = None) -> Verdict:
    """Classify the first ``max_packets`` client packets of one connection (any order)."""
    ev = params or EvidenceParams()
    rsts = [p for p in packets if p.flags & TH_RST]
    ordinary = [p for p in packets if not p.flags & TH_RST]
    has_fin = any(p.flags & TH_FIN for p in ordinary)
    syns = [p for p in ordinary if p.flags & (TH_SYN | TH_ACK) == TH_SYN]
    syn = min(syns, key=lambda p: (p.ts, p.seq)) if syns else None
    timed_out = bool(is_timeout(bool(rsts), has_fin, len(packets), max_packets))
    stage = STAGES[stage_code(packets, rsts, timed_out)]
    mark = scanner_mark(syn) if syn is not None else None
    if not rsts:
        return plain_verdict(stage, timed_out, mark)
    others = [p for p in ordinary if not p.flags & TH_SYN]
    basis = int(basis_code(mark is not None, bool(others)))
    # a scanner's SYN is answered by the client's own kernel: a TTL spread there is the scanner's (as injected)
    gfw1 = basis != B_SCANNER and gfw_type1([p for p in rsts if not p.flags & TH_ACK], [p.ttl for p in ordinary],
                                           ev.injected_ttl_delta)
    gfw2 = gfw_type2([p.seq for p in rsts if p.flags & TH_ACK])
    tags = reset_verdict_tags(has_fin, *reset_codes(rsts), gfw1, gfw2, mark == "zmap")
    ttl_delta, ipid_delta = evidence(rsts, ordinary)
    injected = bool(injected_code(basis, NO_DELTA if ttl_delta is None else ttl_delta,
                                  NO_DELTA if ipid_delta is None else ipid_delta, ev))
    sig = signature(stage, False, tags) if stage != NO_MATCH else None
    return Verdict(stage, tags, sig, ttl_delta, ipid_delta, injected, mark, EVIDENCE_BASES[basis])


B_PACKETS, B_SYN_ONLY, B_SCANNER = range(3)  # indices into EVIDENCE_BASES
NO_DELTA = -1  # a delta with nothing to measure (None in a Verdict), where codes stand for it


def basis_code(marked: Any, has_others: Any) -> Any:
    """What the evidence of a reset connection rests on (index in EVIDENCE_BASES): its SYN is a
    scanner's (``marked``: a crafted SYN and the client kernel's RST differ by construction, never
    called injected), else the client's ordinary packets after it, else the SYN alone (bools or arrays)."""
    return where(marked, B_SCANNER, where(has_others, B_PACKETS, B_SYN_ONLY))


def injected_code(basis: Any, ttl_delta: Any, ipid_delta: Any, ev: EvidenceParams) -> Any:
    """A reset connection's deltas reach the thresholds (a delta may be NO_DELTA), and its basis is not
    a scanner's SYN (ints or numpy arrays)."""
    ttl = (ttl_delta != NO_DELTA) & (ttl_delta >= ev.injected_ttl_delta)
    ipid = (ipid_delta != NO_DELTA) & (ipid_delta >= ev.injected_ipid_delta)
    return (basis != B_SCANNER) & (ttl | ipid)
