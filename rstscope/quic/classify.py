"""Level, flights, stage and tags of a QUIC attempt (docs/quic.md).

What the server received, read from the client's packets alone: 0 only Initials (and 0-RTT, which a
client sends before it hears from the server), 1 a Handshake packet and no 1-RTT (the client sends
Handshake packets only after the server's flight: it completed its side), 2 1-RTT packets in one flight,
3 in two or more (the client heard the server's answer to its first 1-RTT flight and went on).
The stage reuses Radar's keys (``rstscope.core.classify.STAGES``) with these meanings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rstscope.core.classify import NO_MATCH, POST_ACK, POST_PSH, POST_SYN
from rstscope.quic.packet import HANDSHAKE, INITIAL, ONE_RTT, QuicPacketRecord
from rstscope.quic.table import END_CAP, END_CLOSE, END_CUTOFF, END_RESTART, Attempt, QuicFinished

MIN_FLIGHT_GAP_S = 0.001  # below this, two datagrams are one burst whatever the RTT

TAG_TIMEOUT = "timeout"
TAG_CLIENT_CLOSE = "client_close"
TAG_INITIAL_REPEAT = "initial_repeat"

LEVEL_STAGES = (POST_SYN, POST_ACK, POST_PSH, NO_MATCH)  # stage of a timeout / client close, by level


class QuicVerdict(NamedTuple):
    stage: str
    tags: tuple[str, ...]
    level: int
    flights: int  # client 1-RTT flights
    rtt: float | None  # seconds: first Handshake packet minus first Initial


def rtt_of(packets: Sequence[QuicPacketRecord]) -> float | None:
    """First client Handshake packet minus the attempt's first packet (its Initial): the client waited
    one round trip for the server's flight. None without a Handshake packet."""
    if not packets:
        return None
    first = min(p.ts for p in packets)
    hs = [p.ts for p in packets if p.ptype == HANDSHAKE]
    return min(hs) - first if hs else None


def flights_of(packets: Sequence[QuicPacketRecord], rtt: float | None) -> int:
    """How many client flights carry 1-RTT packets. In time order, a 1-RTT packet starts a new flight
    when it comes at least max(rtt / 2, 1 ms) after the previous client packet: the client sends its next
    flight only after hearing from the server, and a burst (coalesced packets share one timestamp) is
    far tighter than half a round trip. Without an rtt the 1 ms floor alone separates flights."""
    gap = max(rtt / 2, MIN_FLIGHT_GAP_S) if rtt is not None else MIN_FLIGHT_GAP_S
    flight = 0
    with_1rtt: set[int] = set()
    prev: float | None = None
    for p in sorted(packets, key=lambda p: p.ts):  # stable: a datagram's packets keep their order
        if p.ptype == ONE_RTT:
            if prev is not None and p.ts - prev >= gap:
                flight += 1
            with_1rtt.add(flight)
        prev = p.ts
    return len(with_1rtt)


def level_of(packets: Sequence[QuicPacketRecord], flights: int) -> int:
    """0 Initials only, 1 Handshake and no 1-RTT, 2 one 1-RTT flight, 3 two or more."""
    if flights >= 2:
        return 3
    if flights == 1:
        return 2
    return 1 if any(p.ptype == HANDSHAKE for p in packets) else 0


def hellos_of(packets: Sequence[QuicPacketRecord]) -> int:
    """Decrypted Initials that carry a ClientHello's start (CRYPTO at offset 0)."""
    return sum(1 for p in packets if p.ptype == INITIAL and p.hello and p.decrypted)


def verdict(packets: Sequence[QuicPacketRecord], end: str, restart_tag: str = "") -> QuicVerdict:
    """Stage and tags of an attempt that was not excluded, from its packets and why it ended.

    Timeout (END_CUTOFF) or client close: the stage of its level (level 3 is no_match: a client that
    finished and closed inside 1-RTT looks exactly like it). Restart: no_match with the restart's tag.
    Cap: no_match, no tag (as TCP's 10th packet). ``initial_repeat``: the ClientHello came in two or
    more Initials with no progress (level 0), for a timeout or a close.
    """
    rtt = rtt_of(packets)
    flights = flights_of(packets, rtt)
    level = level_of(packets, flights)
    tags: tuple[str, ...] = ()
    if end in (END_CUTOFF, END_CLOSE):
        stage = LEVEL_STAGES[level]
        tags = (TAG_TIMEOUT if end == END_CUTOFF else TAG_CLIENT_CLOSE,)
        if level == 0 and hellos_of(packets) >= 2:
            tags += (TAG_INITIAL_REPEAT,)
    elif end == END_RESTART:
        stage, tags = NO_MATCH, (restart_tag,) if restart_tag else ()
    elif end == END_CAP:
        stage = NO_MATCH
    else:
        raise ValueError(f"unknown end {end!r}")
    return QuicVerdict(stage, tags, level, flights, rtt)


def classify_attempt(fin: QuicFinished) -> QuicVerdict:
    """The verdict of a finished attempt (which must not be excluded)."""
    att: Attempt = fin.attempt
    return verdict(att.packets, fin.end, att.tag)
