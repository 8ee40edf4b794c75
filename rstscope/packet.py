"""The packet record: the header fields SPEC section 3 keeps of one client-to-server TCP packet.

It never holds payload bytes, only the payload length. Addresses are packed bytes (4 or 16) so the
record stays small on the wire and hashes fast in the connection table.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import NamedTuple

# TCP flag bits, named as in RFC 9293 section 3.1 (plus ECE/CWR from RFC 3168).
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
TH_ECE = 0x40
TH_CWR = 0x80

# an address as an integer id in columns (fastpath.reader.AddressTable, direction.Direction):
# an IPv4 address is its value, an IPv6 one V6_BASE + its index in the table
V6_BASE = 1 << 32

_KEY4 = struct.Struct(">4sH4sH").pack  # pack_key of an IPv4 tuple


class PacketRecord(NamedTuple):
    """One client-to-server TCP packet, reduced to the fields the method needs."""

    ts: float  # capture time, seconds since the Unix epoch (UTC)
    version: int  # IP version: 4 or 6
    src: bytes  # client address, packed (4 or 16 bytes)
    dst: bytes  # server address, packed
    sport: int  # client port
    dport: int  # server port
    flags: int  # TCP flags byte (TH_*)
    seq: int  # TCP sequence number
    ack: int  # TCP acknowledgement number
    ipid: int | None  # IPv4 identification; None for IPv6
    ttl: int  # IPv4 TTL or IPv6 hop limit
    window: int  # TCP window (unscaled)
    payload_len: int  # TCP payload length in bytes (the bytes themselves are never kept)
    opt_len: int  # TCP options length in bytes (0: no options)

    @property
    def tuple_key(self) -> tuple[bytes, int, bytes, int]:
        """The connection key: (client ip, client port, server ip, server port); protocol is TCP."""
        return (self.src, self.sport, self.dst, self.dport)

    @property
    def packed_key(self) -> bytes:
        """``tuple_key`` as one bytes object (``pack_key``): the Kafka key, and the tables' dict key."""
        return pack_key(self.src, self.sport, self.dst, self.dport)


def pack_key(src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    """A 4-tuple as client ip, client port, server ip, server port (ports big-endian): 12 bytes for IPv4,
    36 for IPv6. One small object instead of a tuple of four (about 45 bytes instead of 220 per held
    connection), and the same bytes the edge keys Kafka messages with."""
    if len(src) == 4 and len(dst) == 4:  # IPv4: the same bytes in one call (the edge packs one per packet)
        return _KEY4(src, sport, dst, dport)
    return src + sport.to_bytes(2, "big") + dst + dport.to_bytes(2, "big")


def unpack_key(key: bytes) -> tuple[bytes, int, bytes, int]:
    """``pack_key`` reversed."""
    a = (len(key) - 4) // 2
    return key[:a], int.from_bytes(key[a:a + 2], "big"), key[a + 2:2 * a + 2], int.from_bytes(key[2 * a + 2:], "big")


def client_of(key: bytes) -> bytes:
    """The client address of a ``pack_key`` tuple (without unpacking the rest)."""
    return key[:(len(key) - 4) // 2]


def reverse_key(key: bytes) -> bytes:
    """The packed tuple of the other direction (server ip, server port, client ip, client port)."""
    half = len(key) // 2
    return key[half:] + key[:half]


def ip_text(packed: bytes) -> str:
    """Packed address to its usual text form."""
    if len(packed) == 4:
        return socket.inet_ntoa(packed)  # the same text, ten times faster (a record has two addresses)
    return str(ipaddress.ip_address(packed))


def flag_text(flags: int) -> str:
    """Flags as tcpdump-like letters (S, F, R, P, A, U, E, W)."""
    names = ((TH_SYN, "S"), (TH_FIN, "F"), (TH_RST, "R"), (TH_PSH, "P"), (TH_ACK, "A"),
             (TH_URG, "U"), (TH_ECE, "E"), (TH_CWR, "W"))
    return "".join(letter for bit, letter in names if flags & bit) or "."
