"""Sampling at the edge (SPEC section 3): pick new connections at their SYN, keep their first N packets.

The decision is a keyed hash of the connection's endpoints, so it needs no state: every later packet
of an unsampled connection recomputes the same "no" and costs nothing. ``hash`` mode uses a key
shared by all hosts (the same tuple gets the same decision everywhere); ``random`` mode draws a
secret key per process, which is uniform random selection that a client cannot predict.
The gate then keeps a small entry only for sampled connections, to pass their first N packets, until
their window closes. ``QuicGate`` is the same for UDP: direction by server port (and addresses),
the same keyed-hash sampling of the 4-tuple, and the QUIC reader, which runs the attempt table's rule
and so passes each attempt's first N datagrams (docs/edge.md).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter

from rstscope.config import WindowParams
from rstscope.core.table import LATE, STEP_DROP, Track, is_syn, track, window_of
from rstscope.direction import OTHER, S2C, UNKNOWN, Direction
from rstscope.packet import PacketRecord, pack_key, reverse_key
from rstscope.quic.offline import ServerSide
from rstscope.quic.packet import QuicDatagram
from rstscope.quic.reader import QuicReader
from rstscope.quic.udp import UdpDatagram

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
        return self.keep_all or self.keep_packed(pack_key(*key))

    def keep_packed(self, key: bytes) -> bool:
        """``keep`` for a tuple packed by ``packet.pack_key``: its halves are the two endpoints (address,
        port big-endian), so ordering them as bytes orders them as ``keep``'s (address, port) pairs."""
        if self.keep_all:
            return True
        half = len(key) // 2
        a, b = key[:half], key[half:]
        data = a + b if a <= b else b + a
        h = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=self._key).digest(), "big")
        return h < self._threshold


class Gate:
    """Direction, sampling and the first-N gate: which packets leave the edge.

    It runs the connection table's own rule (``core.table.step``) without keeping packets, so it
    passes exactly the packets a connection takes and counts the others by the same names.
    Counters (packets): server_to_client, other_traffic, unsampled, sampled, and the rule's
    no_syn, beyond_max_packets, after_close, after_idle, late.
    """

    def __init__(self, direction: Direction, sampler: Sampler, params: WindowParams | None = None) -> None:
        self.direction = direction
        self.sampler = sampler
        self.params = params or WindowParams()
        self.max_packets = self.params.max_packets
        self.size = self.params.size_s
        self.entries: dict[bytes, Track] = {}  # packed tuple -> its connection's Track
        self.counters: Counter[str] = Counter()
        self.watermark = float("-inf")
        self.current_window = -1

    def admit(self, pkt: PacketRecord) -> bool:
        """True when this packet is one of the first N client packets of a sampled connection."""
        d = self.direction.of(pkt)
        if d is S2C:
            self.counters["server_to_client"] += 1
            return False
        if d is OTHER:
            self.counters["other_traffic"] += 1
            return False
        return self.take(pkt.packed_key, pkt.ts, pkt.flags, pkt.seq, int(window_of(pkt.ts, self.size)), d is UNKNOWN)

    def take(self, key: bytes, ts: float, flags: int, seq: int, window: int, unknown: bool) -> bool:
        """``admit`` after direction, for a packet that is not known to be the server's: ``key`` is its
        packed tuple (``PacketRecord.packed_key``), ``window`` its ``window_of``, ``unknown`` whether no
        server is configured (it may still turn out to be the server's answer)."""
        self.clock(ts, window)
        if window < self.current_window:
            self.counters[LATE] += 1
            return False
        return self.take_in_time(key, ts, flags, seq, window, unknown)

    def clock(self, ts: float, window: int) -> None:
        """Event time reaches ``ts`` (in ``window``) if it is the latest yet; the connections of the
        windows it closes are forgotten."""
        if ts > self.watermark:
            self.watermark = ts
            if window > self.current_window:  # the watermark's window is this packet's
                self.current_window = window
                self.entries = {k: e for k, e in self.entries.items() if e.window_start >= window}

    def take_in_time(self, key: bytes, ts: float, flags: int, seq: int, window: int, unknown: bool) -> bool:
        """``take`` for a packet that is not late, the gate's clock moved by it already (``take``, or
        ``fastpath.gate`` for columns). Its tuple's earlier packets went through before it."""
        c = self.counters
        e = self.entries.get(key)
        if (e is None or e.window_start != window) and unknown and not is_syn(flags):
            r = self.entries.get(reverse_key(key))
            if r is not None and r.window_start == window:
                c["server_to_client"] += 1  # learnt: the reverse tuple's client sent a SYN in this window
                return False
        if not (self.sampler.keep_all or self.sampler.keep_packed(key)):
            c["unsampled"] += 1
            return False
        o, after = track(e, ts, flags, seq, window, self.params)
        if after is not None and after is not e:
            self.entries[key] = after
        if o.step is STEP_DROP:
            c[o.counter] += 1
            return False
        # OPEN, JOIN, FINISH_OPEN and FINISH_DROP leave the edge: a packet that decides its connection
        # (FINISH_DROP) decides it in the table too, which then counts it; the table runs the same rule
        # on the same packets and so never disagrees with the gate.
        c["sampled"] += 1
        return True


class QuicGate:
    """Direction, sampling and the first-N gate for UDP datagrams to the QUIC server ports.

    Sampling is per 4-tuple (a QUIC attempt's datagrams share it; the same keyed hash as TCP's, so
    ``hash`` mode agrees across hosts), before any byte is read: an unsampled datagram costs a hash.
    A sampled tuple's datagrams go through the reader (``quic.reader``), which decrypts client
    Initials and runs the attempt table's rule: it passes what an attempt takes (at most its first
    ``max_packets`` datagrams) and names the rest. Counters (datagrams): server_to_client,
    not_to_server (UDP on other ports: the caller counts those), unsampled, sampled, and the reader's
    no_initial, after_close, beyond_max_packets, late, quic_<decode reason>; notes
    initial_undecryptable, client_hello_error.
    """

    def __init__(self, server_ips: list[str], ports: list[int], sampler: Sampler,
                 params: WindowParams | None = None, sni_policy: str = "hash") -> None:
        self.side = ServerSide(server_ips, ports, require_ips=False)
        self.ports = self.side.ports
        self.sampler = sampler
        self.reader = QuicReader(params, sni_policy)
        self.counters: Counter[str] = Counter()

    def admit(self, dg: UdpDatagram) -> QuicDatagram | None:
        """The datagram's records when it leaves the edge; None (counted) when it does not."""
        c = self.counters
        if not self.side.is_server(dg.dst, dg.dport):
            c["server_to_client" if self.side.is_server(dg.src, dg.sport) else "not_to_server"] += 1
            return None
        if not self.sampler.keep((dg.src, dg.sport, dg.dst, dg.dport)):
            c["unsampled"] += 1
            return None
        got = self.reader.read(dg)
        if isinstance(got, str):
            c[got] += 1
            return None
        c["sampled"] += 1
        return got
