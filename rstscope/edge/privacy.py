"""Client addresses at the edge: truncated or replaced by a keyed hash before anything leaves the host.

The transform runs after sampling and direction (which need the real 4-tuple) and before encoding,
so the packets topic never holds a raw client address. It is deterministic per address, so every
packet of a connection keeps one Kafka key and partition.

- ``truncate:24,48`` keeps the first 24 bits of an IPv4 and 48 bits of an IPv6 client address.
  Geolocation by prefix still works downstream; two clients of one /24 on the same source port to
  the same server would share a 4-tuple (rare: the port is ephemeral, and the ISN tells them apart).
- ``hash:KEYFILE`` maps each address to HMAC-SHA256(key, address), placed in a range that can never
  be a real client: 240.0.0.0/4 (reserved) for IPv4, fd00::/8 (ULA) for IPv6. Without the key the
  mapping cannot be reversed by enumerating IPv4 space. Downstream geolocation is lost: with ``hash``,
  country and ASN must be looked up at the edge (see docs/edge.md for the proposed record extension).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from pathlib import Path

AddrTransform = Callable[[bytes], bytes]

HASH_V4_NET = bytes([0xF0, 0, 0, 0])  # 240.0.0.0/4
HASH_V6_NET = bytes([0xFD]) + bytes(15)  # fd00::/8


def _mask(bits: int, length: int) -> int:
    return ((1 << bits) - 1) << (length * 8 - bits) if bits else 0


class Truncate:
    """Keep the first ``v4``/``v6`` bits of the address, zero the rest."""

    def __init__(self, v4: int = 24, v6: int = 48) -> None:
        if not (0 <= v4 <= 32 and 0 <= v6 <= 128):
            raise ValueError("truncate: IPv4 bits 0..32, IPv6 bits 0..128")
        self.v4, self.v6 = v4, v6
        self._m4, self._m6 = _mask(v4, 4), _mask(v6, 16)

    def __call__(self, addr: bytes) -> bytes:
        n = len(addr)
        m = self._m4 if n == 4 else self._m6
        return (int.from_bytes(addr, "big") & m).to_bytes(n, "big")


class KeyedHash:
    """HMAC-SHA256 of the address, kept in the address family, inside a never-routed range."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("hash: the key must be at least 16 bytes")
        self.key = key
        self._cache: dict[bytes, bytes] = {}

    @classmethod
    def from_file(cls, path: Path) -> KeyedHash:
        return cls(path.read_bytes().strip())

    def __call__(self, addr: bytes) -> bytes:
        out = self._cache.get(addr)
        if out is not None:
            return out
        d = hmac.new(self.key, addr, hashlib.sha256).digest()
        v4 = len(addr) == 4
        out = bytes([HASH_V4_NET[0] | (d[0] & 0x0F)]) + d[1:4] if v4 else HASH_V6_NET[:1] + d[:15]
        if len(self._cache) >= 1 << 16:
            self._cache.clear()
        self._cache[addr] = out
        return out


def parse(spec: str) -> AddrTransform:
    """``truncate:V4,V6`` or ``hash:KEYFILE``; raises ValueError with a readable message."""
    kind, _, arg = spec.partition(":")
    if kind == "truncate":
        parts = [p.strip() for p in (arg or "24,48").split(",")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"--client-ip {spec!r}: want truncate:V4BITS,V6BITS (e.g. truncate:24,48)")
        return Truncate(int(parts[0]), int(parts[1]))
    if kind == "hash":
        if not arg:
            raise ValueError("--client-ip hash:KEYFILE needs a key file")
        try:
            return KeyedHash.from_file(Path(arg))
        except OSError as e:
            raise ValueError(f"--client-ip {spec!r}: {e.strerror or e}") from e
    raise ValueError(f"--client-ip {spec!r}: want truncate:V4,V6 or hash:KEYFILE")
