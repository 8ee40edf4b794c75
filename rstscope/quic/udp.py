"""Frame -> IP -> UDP -> the datagram's payload, for QUIC.

Why a separate decoder: rstscope's TCP path keeps no payload bytes at all, but a passive QUIC observer
must read the UDP payload (the QUIC headers, and the client Initial it decrypts). The payload is handed
on for that one purpose; ``UdpDatagram`` is not kept by anything after the table has read it.
The IP layer is the TCP path's (``rstscope.decode.tcp.decode_ip``), so both drop the same packets.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from rstscope.decode.link import ip_start
from rstscope.decode.tcp import IPPROTO_UDP, decode_ip

UDP_HEADER_LEN = 8
_UDP = struct.Struct(">HHHH")


class UdpDatagram(NamedTuple):
    """One UDP datagram: header fields and its payload (only to be parsed, never stored)."""

    ts: float
    ip_version: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    ttl: int
    ipid: int | None
    payload: bytes


def decode_udp(ts: float, linktype: int, data: bytes) -> UdpDatagram | str:
    """One captured frame to a UDP datagram, or the reason it is not one (a counter name)."""
    start = ip_start(linktype, data)
    if isinstance(start, str):
        return start
    ip = decode_ip(data, start[0], start[1], IPPROTO_UDP, "non_udp")
    if isinstance(ip, str):
        return ip
    l4 = ip.l4
    if len(data) < l4 + UDP_HEADER_LEN or ip.l4_len < UDP_HEADER_LEN:
        return "truncated_udp"
    sport, dport, ulen, _sum = _UDP.unpack_from(data, l4)
    length = min(ulen, ip.l4_len) if ulen >= UDP_HEADER_LEN else ip.l4_len  # ulen 0: GSO / jumbogram
    end = l4 + length
    if end > len(data):
        return "snapped_udp"  # the capture cut the payload: an Initial cannot be decrypted
    return UdpDatagram(ts, ip.version, ip.src, ip.dst, sport, dport, ip.ttl, ip.ipid, data[l4 + UDP_HEADER_LEN:end])
