"""Classification of one finished connection: stage, tags, signature, injection evidence, scanner.

Pure functions of the connection's client packets, taken as a *set*: capture timestamps can be coarse,
so nothing here depends on the order packets arrived in; where order matters ("the last packet"), it
is recovered from TCP sequence numbers. docs/method.md states each rule and the test that pins it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    "acknumdiff", "acknumdiff0", "single_rstack", "multiple_rstacks", "rst_and_rstacks", "zmap",
)

# The 19 tampering signatures of Sundara Raman et al. (SIGCOMM 2023), per stage.
SIGNATURES = (
    "SYN→∅", "SYN→RST", "SYN→RST+ACK", "SYN→RST;RST+ACK",
    "SYN;ACK→∅", "SYN;ACK→RST", "SYN;ACK→RST;RST", "SYN;ACK→RST+ACK", "SYN;ACK→RST+ACK;RST+ACK",
    "PSH+ACK→∅", "PSH+ACK→RST", "PSH+ACK→RST+ACK", "PSH+ACK→RST;RST+ACK", "PSH+ACK→RST+ACK;RST+ACK",
    "PSH+ACK→RST=RST", "PSH+ACK→RST≠RST", "PSH+ACK→RST;RST0",
    "PSH+ACK;Data→RST", "PSH+ACK;Data→RST+ACK",
)

SCANNERS = ("zmap", "masscan", "mirai", "generic")
ZMAP_IPID = 54321
ZMAP_WINDOW = 65535
MASSCAN_WINDOWS = frozenset((1024, 1025))
GENERIC_MIN_TTL = 200
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


def _seq_after(a: int, b: int) -> bool:
    """a comes after b in sequence space (RFC 1982 serial arithmetic)."""
    d = (a - b) % SEQ_MOD
    return 0 < d < SEQ_HALF


def _is_data(p: PacketRecord) -> bool:
    return bool(p.flags & TH_PSH) or p.payload_len > 0


def progress(ordinary: Sequence[PacketRecord]) -> tuple[list[PacketRecord], list[PacketRecord]]:
    """Split non-RST packets into post-SYN packets and distinct data segments (by seq)."""
    others = [p for p in ordinary if not p.flags & TH_SYN]
    seen: dict[int, PacketRecord] = {}
    for p in others:
        if _is_data(p) and p.seq not in seen:
            seen[p.seq] = p
    return others, list(seen.values())


def reset_stage(others: Sequence[PacketRecord], data: Sequence[PacketRecord]) -> str:
    """Stage of a reset connection: the progress its non-RST packets show."""
    if not others:
        return POST_SYN
    if not data:
        return POST_ACK
    return POST_PSH if len(data) == 1 else LATER


def timeout_stage(others: Sequence[PacketRecord], data: Sequence[PacketRecord]) -> str:
    """Stage of a timed-out connection: what its last packet was (order from sequence numbers)."""
    if not others:
        return POST_SYN  # only the SYN (and its retransmissions)
    if not data:
        # Post-ACK only if every ACK is the handshake ACK: one acknowledgement number throughout.
        # A client that acknowledged server data and went quiet is idle, not tampered with.
        return POST_ACK if len({p.ack for p in others}) == 1 else NO_MATCH
    if len(data) == 1:
        first = data[0]
        if not any(_seq_after(p.seq, first.seq) for p in others):
            return POST_PSH  # nothing followed the first data packet (retransmissions allowed)
    return NO_MATCH


def reset_tags(rsts: Sequence[PacketRecord], has_fin: bool) -> list[str]:
    """Sub-tags of ``reset``, each evaluated on its own (SPEC section 5)."""
    tags = ["reset"]
    if has_fin:
        tags.append("fin")
    plain = [p for p in rsts if not p.flags & TH_ACK]
    n_rstack = len(rsts) - len(plain)
    if len(plain) == 1:
        tags.append("single_rst")
    elif len(plain) > 1:
        tags.append("multiple_rsts")
        tags.append(acknum_tag([p.ack for p in plain]))
    if n_rstack == 1:
        tags.append("single_rstack")
    elif n_rstack > 1:
        tags.append("multiple_rstacks")
    if plain and n_rstack:
        tags.append("rst_and_rstacks")
    return tags


def acknum_tag(acks: Sequence[int]) -> str:
    """How the ack numbers of several RSTs (without ACK) relate."""
    if len(set(acks)) == 1:
        return "acknumsame0" if acks[0] == 0 else "acknumsame"
    return "acknumdiff0" if 0 in acks else "acknumdiff"


def signature(stage: str, timed_out: bool, tags: Sequence[str]) -> str | None:
    """The paper's signature, from the stage and the kinds and numbers of RSTs; None if none fits."""
    if "fin" in tags:
        return None
    if timed_out:
        return {POST_SYN: "SYN→∅", POST_ACK: "SYN;ACK→∅", POST_PSH: "PSH+ACK→∅"}.get(stage)
    if "reset" not in tags:
        return None
    rst = "single_rst" in tags or "multiple_rsts" in tags
    rstack = "single_rstack" in tags or "multiple_rstacks" in tags
    both = rst and rstack
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


def _range_distance(v: int, lo: int, hi: int) -> int:
    return lo - v if v < lo else v - hi if v > hi else 0


def _circular(a: int, b: int) -> int:
    d = (a - b) & 0xFFFF
    return min(d, 0x10000 - d)


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
    ttl_delta = max(_range_distance(r.ttl, lo, hi) for r in rsts)
    ids = [p.ipid for p in ordinary if p.ipid is not None]
    rst_ids = [r.ipid for r in rsts if r.ipid is not None]
    ipid_delta = max(min(_circular(r, o) for o in ids) for r in rst_ids) if ids and rst_ids else None
    return ttl_delta, ipid_delta


def scanner_mark(syn: PacketRecord) -> str | None:
    """Which scanner made this SYN, judged from its header fields (SPEC section 5)."""
    if syn.window == ZMAP_WINDOW and (syn.ipid == ZMAP_IPID or syn.opt_len <= 4):
        return "zmap"  # before 4.1: IP ID 54321; from 4.1: random IP ID, window 65535, MSS only
    if syn.version == 4 and syn.ipid is not None:
        dst = int.from_bytes(syn.dst, "big")
        if syn.window in MASSCAN_WINDOWS and syn.ipid == (dst ^ syn.dport ^ syn.seq) & 0xFFFF:
            return "masscan"
        if syn.seq == dst:
            return "mirai"
    if syn.opt_len == 0 and syn.ttl >= GENERIC_MIN_TTL:
        return "generic"
    return None


def classify(packets: Sequence[PacketRecord], max_packets: int = 10,
             params: EvidenceParams | None = None) -> Verdict:
    """Classify the first ``max_packets`` client packets of one connection (any order)."""
    ev = params or EvidenceParams()
    rsts = [p for p in packets if p.flags & TH_RST]
    ordinary = [p for p in packets if not p.flags & TH_RST]
    has_fin = any(p.flags & TH_FIN for p in ordinary)
    others, data = progress(ordinary)
    syns = [p for p in ordinary if p.flags & (TH_SYN | TH_ACK) == TH_SYN]
    syn = min(syns, key=lambda p: (p.ts, p.seq)) if syns else None
    timed_out = not rsts and not has_fin and len(packets) < max_packets
    tags: list[str]
    if rsts:
        stage = reset_stage(others, data)
        tags = reset_tags(rsts, has_fin)
    elif timed_out:
        stage = timeout_stage(others, data)
        tags = ["timeout"]
    else:
        stage, tags = NO_MATCH, []
    mark = scanner_mark(syn) if syn is not None else None
    if mark == "zmap":
        tags.append("zmap")
    ttl_delta, ipid_delta = evidence(rsts, ordinary)
    injected = (ttl_delta is not None and ttl_delta >= ev.injected_ttl_delta) or (
        ipid_delta is not None and ipid_delta >= ev.injected_ipid_delta)
    sig = signature(stage, timed_out, tags) if stage != NO_MATCH else None
    return Verdict(stage, tuple(tags), sig, ttl_delta, ipid_delta, injected, mark)
