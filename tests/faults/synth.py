"""A mid-size capture for fault tests, built in the test: many interleaved TCP connections with mixed
outcomes over several 15-minute buckets, so a crash or an outage always falls in the middle of the
stream. Deterministic for a seed; frames are written in timestamp order (as one interface captures).

Outcomes (client -> server, plus the server's answers, which the edge's direction gate drops):
graceful close, RST right after the handshake, after the first data packet, after later data, SYNs that
are never answered (retransmitted: ``multi_syn``), and connections that go quiet after their first data
packet (Post-PSH timeouts, decided when their window closes, or at the end of the input). The payload
bytes are ``marker`` repeated, so a test can look for them downstream.

The capture ends when its traffic ends: nothing is appended. No connection starts within
``MARGIN_S`` of a window's end (none straddles one, and the quiet ones lie >= 10 s before their
window's end), and an ordinary workload (one graceful connection a second for ``TAIL_S``) follows the
mix, so the quiet connections of the last window lie >= 10 s before the end of the input too: none is
``incomplete``, and ``expected`` knows every count.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from builders import ether, ipv4_tcp  # tests/ is on sys.path (rootdir conftest)

from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, PacketRecord

SERVER_IP = "10.97.0.2"
SERVER = bytes([10, 97, 0, 2])
PORTS = (80, 81)
T0 = 1_700_001_000.0  # a little after a 15-minute boundary
OUTCOMES = ("ok", "rst_ack", "rst_psh", "rst_later", "syn_only", "quiet")
STAGE_OF = {"ok": "no_match", "rst_ack": "post_ack", "rst_psh": "post_psh", "rst_later": "later_in_flow",
            "quiet": "post_psh"}  # syn_only: excluded as multi_syn
WINDOW_S = 900
MARGIN_S = 15.0  # no connection starts this close before a window's end (one lasts <= ~1.3 s)
TAIL_S = 15.0  # the ordinary workload after the mix: every quiet connection is >= 10 s before the end


def _conn(i: int, start: float, outcome: str, rng: random.Random, payload: int
          ) -> list[tuple[PacketRecord, bool]]:
    """(packet, from_client) pairs of one connection."""
    client = bytes([10, 98, (i >> 8) & 0xFF, i & 0xFF])
    sport = 1024 + (i * 7919) % 60000
    dport = PORTS[i % len(PORTS)]
    isn, sisn = rng.getrandbits(32), rng.getrandbits(32)
    ipid = rng.getrandbits(16)
    t = start
    out: list[tuple[PacketRecord, bool]] = []

    def c(flags: int, seq: int, ack: int, n: int = 0, opt: int = 0) -> None:
        nonlocal t, ipid
        ipid = (ipid + 1) & 0xFFFF
        out.append((PacketRecord(t, 4, client, SERVER, sport, dport, flags, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                                 ipid, 64, 64240, n, opt), True))
        t += rng.uniform(0.001, 0.05)

    def s(flags: int, seq: int, ack: int, n: int = 0) -> None:
        nonlocal t
        out.append((PacketRecord(t, 4, SERVER, client, dport, sport, flags, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                                 0, 64, 65160, n, 0), False))
        t += rng.uniform(0.001, 0.02)

    c(TH_SYN, isn, 0, opt=20)
    if outcome == "syn_only":
        t += 1.0
        c(TH_SYN, isn, 0, opt=20)
        return out
    s(TH_SYN | TH_ACK, sisn, isn + 1)
    c(TH_ACK, isn + 1, sisn + 1)
    if outcome == "rst_ack":
        c(TH_RST, isn + 1, 0)
        return out
    c(TH_PSH | TH_ACK, isn + 1, sisn + 1, payload)
    s(TH_ACK, sisn + 1, isn + 1 + payload)
    if outcome == "rst_psh":
        c(TH_RST, isn + 1 + payload, 0)
        return out
    if outcome == "quiet":
        return out
    c(TH_PSH | TH_ACK, isn + 1 + payload, sisn + 1, payload)
    if outcome == "rst_later":
        c(TH_RST, isn + 1 + 2 * payload, 0)
        return out
    s(TH_PSH | TH_ACK, sisn + 1, isn + 1 + 2 * payload, 40)
    c(TH_FIN | TH_ACK, isn + 1 + 2 * payload, sisn + 41)
    s(TH_FIN | TH_ACK, sisn + 41, isn + 2 + 2 * payload)
    c(TH_ACK, isn + 2 + 2 * payload, sisn + 42)
    return out


def _off_cutoff(t: float) -> float:
    """``t``, or the start of the next window if ``t`` lies within MARGIN_S of a window's end."""
    nxt = (t // WINDOW_S + 1) * WINDOW_S
    return nxt + 0.5 if nxt - t < MARGIN_S else t


def _plan(connections: int, span_s: float, seed: int, t0: float) -> tuple[random.Random, list[tuple[float, str]]]:
    rng = random.Random(seed)
    plan = []
    step = span_s / max(connections, 1)
    for i in range(connections):
        outcome = OUTCOMES[rng.randrange(len(OUTCOMES))]
        plan.append((_off_cutoff(t0 + i * step + rng.uniform(0, step / 2)), outcome))
    return rng, plan


def frames(connections: int, span_s: float = 2400.0, seed: int = 7, marker: bytes = b"rstscope-payload",
           t0: float = T0) -> list[tuple[float, bytes]]:
    """Ethernet frames (ts, bytes) of ``connections`` connections started evenly over ``span_s``, then
    the tail: a graceful connection a second for TAIL_S."""
    rng, plan = _plan(connections, span_s, seed, t0)
    pkts: list[tuple[PacketRecord, bool]] = []
    for i, (start, outcome) in enumerate(plan):
        pkts += _conn(i, start, outcome, rng, rng.randint(20, 200))
    end = max((p.ts for p, _c in pkts), default=t0)
    for j in range(int(TAIL_S) + 1):
        pkts += _conn(connections + j, _off_cutoff(end + 1.0 + j), "ok", rng, rng.randint(20, 200))
    pkts.sort(key=lambda x: x[0].ts)
    out = []
    for p, _client in pkts:
        body = (marker * (p.payload_len // len(marker) + 1))[:p.payload_len] if p.payload_len else b""
        out.append((p.ts, ether(ipv4_tcp(p._replace(opt_len=0), body))))
    return out


def expected(connections: int, span_s: float = 2400.0, seed: int = 7, t0: float = T0, **_: object) -> dict[str, Any]:
    """What `rstscope analyze` must find in ``frames(...)``, from how it was made: connections per stage
    (the tail included) and per exclusion."""
    _rng, plan = _plan(connections, span_s, seed, t0)
    outcomes = Counter(o for _t, o in plan)
    stages = Counter({s: 0 for s in ("post_syn", "post_ack", "post_psh", "later_in_flow", "no_match")})
    for o, n in outcomes.items():
        if o in STAGE_OF:
            stages[STAGE_OF[o]] += n
    stages["no_match"] += int(TAIL_S) + 1
    return {"stages": dict(stages), "multi_syn": outcomes["syn_only"], "incomplete": 0,
            "timeouts": outcomes["quiet"]}


def write_pcap(path: Path, frames_: list[tuple[float, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for ts, data in frames_:
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(data), len(data)) + data)
    return path


def make(path: Path, connections: int, **kw: object) -> Path:
    return write_pcap(path, frames(connections, **kw))  # type: ignore[arg-type]
