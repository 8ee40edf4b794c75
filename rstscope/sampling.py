"""Sampling at the edge (SPEC section 3): pick new connections at their SYN, keep their first N packets.

The decision is a keyed hash of the connection's endpoints, so it needs no state: every later packet
of an unsampled connection recomputes the same "no" and costs nothing. ``hash`` mode uses a key
shared by all hosts (the same tuple gets the same decision everywhere); ``random`` mode draws a
secret key per process, which is uniform random selection that a client cannot predict.
The gate then keeps a small entry only for sampled connections, to pass their first N packets.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass

from rstscope.direction import Dir, Direction
from rstscope.packet import TH_ACK, TH_RST, TH_SYN, PacketRecord

Key = tuple[bytes, int, bytes, int]
_SCALE = float(1 << 64)


class Sampler:
    """Keyed-hash selection of connections with a given probability."""

    def __init__(self, probability: float = 1.0, mode: str = "random", key: str | bytes | None = None) -> None:
        if not 0.0 < probability <= 1.0:
            raise ValueError("sampling probability must be in (0, 1]")
        if mode not in ("random", "hash"):
            raise ValueError("sampling mode must be 'random' or 'hash'")
        self.probability = probability
        self.mode = mode
        self.keep_all = probability >= 1.0
        if mode == "random":
            self._key = os.urandom(16)
        else:
            raw = key if key is not None else "rstscope"
            self._key = (raw.encode() if isinstance(raw, str) else raw)[:64]
        self._threshold = int(probability * _SCALE)

    def keep(self, key: Key) -> bool:
        """Whether the connection on this 4-tuple is sampled (the same answer for both directions)."""
        if self.keep_all:
            return True
        a, b = (key[0], key[1]), (key[2], key[3])
        lo, hi = (a, b) if a <= b else (b, a)
        data = lo[0] + lo[1].to_bytes(2, "big") + hi[0] + hi[1].to_bytes(2, "big")
        h = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=self._key).digest(), "big")
        return h < self._threshold


@dataclass(slots=True)
class _Entry:
    syn_seq: int
    count: int
    last_ts: float


def _reverse(key: Key) -> Key:
    return (key[2], key[3], key[0], key[1])


class Gate:
    """Direction, sampling and the first-N gate: which packets leave the edge.

    Counters (packets): server_to_client, other_traffic, unsampled, no_syn, beyond_max_packets, sampled.
    """

    def __init__(self, direction: Direction, sampler: Sampler, max_packets: int = 10,
                 idle_timeout_s: float = 10.0) -> None:
        self.direction = direction
        self.sampler = sampler
        self.max_packets = max_packets
        self.idle = idle_timeout_s
        self.entries: OrderedDict[Key, _Entry] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self.watermark = float("-inf")

    def admit(self, pkt: PacketRecord) -> bool:
        """True when this packet is one of the first N client packets of a sampled connection."""
        d = self.direction.of(pkt)
        c = self.counters
        if d is Dir.S2C:
            c["server_to_client"] += 1
            return False
        if d is Dir.OTHER:
            c["other_traffic"] += 1
            return False
        if pkt.ts > self.watermark:
            self.watermark = pkt.ts
            self._expire()
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        is_syn = pkt.flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN
        e = self.entries.get(key)
        if e is not None and pkt.ts - e.last_ts >= self.idle:
            del self.entries[key]  # idle: that connection is over
            e = None
        if e is None and not is_syn and d is Dir.UNKNOWN:
            r = self.entries.get(_reverse(key))
            if r is not None and pkt.ts - r.last_ts < self.idle:
                c["server_to_client"] += 1
                return False
        if not self.sampler.keep(key):
            c["unsampled"] += 1
            return False
        if is_syn and (e is None or e.syn_seq != pkt.seq):
            # A first SYN, or a new ISN on the tuple: a new connection starts its count.
            # (A SYN with the same ISN is a retransmission and counts within its connection.)
            self.entries[key] = _Entry(pkt.seq, 1, pkt.ts)
            self.entries.move_to_end(key)
            c["sampled"] += 1
            return True
        if e is None:
            c["no_syn"] += 1
            return False
        self.entries.move_to_end(key)
        e.last_ts = max(e.last_ts, pkt.ts)
        if e.count >= self.max_packets:
            c["beyond_max_packets"] += 1
            return False
        e.count += 1
        c["sampled"] += 1
        return True

    def _expire(self) -> None:
        entries = self.entries
        limit = self.watermark - self.idle
        while entries:
            key, e = next(iter(entries.items()))
            if e.last_ts > limit:
                break
            del entries[key]
