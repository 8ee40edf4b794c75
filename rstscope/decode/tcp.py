"""IPv4, IPv6 (with extension headers) and TCP headers -> PacketRecord.

The headers are declared as tables of (name, struct format) in the style of dpkt, and compiled
once into ``struct.Struct`` objects, so decoding one packet is a handful of ``unpack_from`` calls.
Payload bytes are never copied: only the payload length (from the IP length fields) is kept.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from rstscope.packet import PacketRecord

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_NONE = 59
# Extension headers whose length field counts 8-octet units beyond the first 8 (RFC 8200 4.x).
IPV6_EXT_GENERIC = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
MAX_IPV6_EXT = 16

IPV4_HEADER = (
    ("v_hl", "B"), ("tos", "B"), ("len", "H"), ("id", "H"), ("off", "H"),
    ("ttl", "B"), ("p", "B"), ("sum", "H"), ("src", "4s"), ("dst", "4s"),
)
IPV6_HEADER = (
    ("v_tc_flow", "I"), ("plen", "H"), ("nxt", "B"), ("hlim", "B"), ("src", "16s"), ("dst", "16s"),
)
TCP_HEADER = (
    ("sport", "H"), ("dport", "H"), ("seq", "I"), ("ack", "I"), ("off_x2", "B"), ("flags", "B"),
    ("win", "H"), ("sum", "H"), ("urp", "H"),
)


def _compile(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct(">" + "".join(fmt for _, fmt in fields))


_IP4 = _compile(IPV4_HEADER)
_IP6 = _compile(IPV6_HEADER)
_TCP = _compile(TCP_HEADER)
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF


class IpHeader(NamedTuple):
    """What the IP layer tells about one packet: the version, the addresses, TTL / hop limit, IP ID
    (IPv4; None for IPv6), and where the transport header starts and how long it is with its payload."""

    version: int
    src: bytes
    dst: bytes
    ttl: int
    ipid: int | None
    l4: int  # offset of the transport header in ``data``
    l4_len: int  # transport header and payload, from the IP length fields


# What ``ip_walk`` returns: ``IpHeader``'s fields as a plain tuple (no class to build on the TCP hot path).
IpFields = tuple[int, bytes, bytes, int, int | None, int, int]


def decode_ip(data: bytes, off: int, version: int, proto: int, other: str) -> IpHeader | str:
    """The IPv4 or IPv6 header (extension headers walked) of a packet of transport ``proto`` starting
    at ``off``; a reason string when it is not one (``other``: another transport protocol).

    Why one walk: TCP (``decode_ip_tcp``) and UDP (QUIC, ``rstscope.quic.udp``) walk the same headers
    and must drop the same fragments, truncations and malformed lengths. The walk is ``ip_walk``; the
    TCP path (every frame of the edge and of the per-packet ``analyze``) calls it directly and unpacks
    its plain tuple: building an ``IpHeader`` per frame, and this second call, cost the edge's loop ~5%."""
    ip = ip_walk(data, off, version, proto, other)
    if isinstance(ip, str):
        return ip
    return tuple.__new__(IpHeader, ip)


def ip_walk(data: bytes, off: int, version: int, proto: int, other: str) -> IpFields | str:
    """``decode_ip``'s walk, returning ``IpHeader``'s fields as a plain tuple (the TCP hot path)."""
    n = len(data)
    if n <= off:
        return "truncated_ip"
    if version == 0:
        version = data[off] >> 4
    if version == 4:
        if n < off + 20:
            return "truncated_ip"
        v_hl, _tos, total, ipid, frag, ttl, p, _sum, src, dst = _IP4.unpack_from(data, off)
        if v_hl >> 4 != 4:
            return "bad_ip_version"
        ihl = (v_hl & 0x0F) * 4
        if ihl < 20:
            return "bad_ip_header_length"
        if p != proto:
            return other
        if frag & IP_OFFMASK:
            return "ip_fragment"
        l4 = off + ihl
        # total == 0 happens with TSO captures: fall back to what was captured.
        l4_len = total - ihl if total else n - l4
        if l4_len < 0:
            return "bad_ip_total_length"
        return 4, src, dst, ttl, ipid, l4, l4_len
    if version == 6:
        if n < off + 40:
            return "truncated_ip"
        v_tc_flow, plen, nxt, ttl, src, dst = _IP6.unpack_from(data, off)
        if v_tc_flow >> 28 != 6:
            return "bad_ip_version"
        l4 = off + 40
        l4_len = plen if plen else n - l4  # plen 0: jumbogram or TSO; use what was captured
        hops = 0
        while nxt != proto:
            hops += 1
            if hops > MAX_IPV6_EXT:
                return "ipv6_ext_loop"
            if nxt == IPPROTO_NONE:
                return other
            if n < l4 + 8:
                return "truncated_ip"
            if nxt == IPPROTO_FRAGMENT:
                if struct.unpack_from(">H", data, l4 + 2)[0] & 0xFFF8:
                    return "ip_fragment"
                hlen = 8
            elif nxt == IPPROTO_AH:
                hlen = (data[l4 + 1] + 2) * 4
            elif nxt in IPV6_EXT_GENERIC:
                hlen = (data[l4 + 1] + 1) * 8
            else:
                return other
            nxt = data[l4]
            l4 += hlen
            l4_len -= hlen
            if l4_len < 0:
                return "bad_ip_total_length"
        return 6, src, dst, ttl, None, l4, l4_len
    return "bad_ip_version"


def decode_ip_tcp(ts: float, data: bytes, off: int, version: int) -> PacketRecord | str:
    """Decode the IP packet that starts at ``off``; a reason string when it is not usable TCP."""
    ip = ip_walk(data, off, version, IPPROTO_TCP, "non_tcp")
    if isinstance(ip, str):
        return ip
    version, src, dst, ttl, ipid_v, l4, l4_len = ip
    if len(data) < l4 + 20:
        return "truncated_tcp"
    sport, dport, seq, ack, off_x2, flags, win, _tsum, _urp = _TCP.unpack_from(data, l4)
    thl = (off_x2 >> 4) * 4
    if thl < 20:
        return "bad_tcp_header_length"
    payload = l4_len - thl
    if payload < 0:
        return "bad_tcp_header_length"
    # tuple.__new__: PacketRecord(...) without the namedtuple's argument handling (every frame comes here)
    return tuple.__new__(PacketRecord, (ts, version, src, dst, sport, dport, flags, seq, ack, ipid_v, ttl, win,
                                        payload, thl - 20))
