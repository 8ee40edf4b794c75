"""Link layers: where the IP header starts in a frame, per pcap link type.

Link type numbers are the tcpdump.org LINKTYPE_ values. Each handler returns the offset of the IP
header and the IP version it expects (0: read it from the first nibble), or a reason string.
"""

from __future__ import annotations

import struct

LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in host byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_OLD = 12  # DLT_RAW as some systems number it
LINKTYPE_RAW_OLD2 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # like NULL, but the family is big-endian
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_QINQ_OLD = 0x9100
VLAN_TYPES = frozenset((ETH_P_8021Q, ETH_P_8021AD, ETH_P_QINQ_OLD))
MAX_VLAN_TAGS = 4

NFULA_PAYLOAD = 9  # the NFLOG TLV that carries the packet
AF_INET = 2
AF_INET6 = 10
BSD_AF_INET6 = frozenset((24, 28, 30))  # AF_INET6 differs per BSD

_H = struct.Struct(">H")
_HH_LE = struct.Struct("<HH")


def _ethertype(et: int, off: int) -> tuple[int, int] | str:
    if et == ETH_P_IP:
        return off, 4
    if et == ETH_P_IPV6:
        return off, 6
    return "non_ip"


def ethernet(data: bytes) -> tuple[int, int] | str:
    """Ethernet II with up to four 802.1Q / 802.1ad (QinQ) tags."""
    if len(data) < 14:
        return "truncated_link"
    et = _H.unpack_from(data, 12)[0]
    off = 14
    tags = 0
    while et in VLAN_TYPES:
        tags += 1
        if tags > MAX_VLAN_TAGS or len(data) < off + 4:
            return "truncated_link" if tags <= MAX_VLAN_TAGS else "vlan_tag_loop"
        et = _H.unpack_from(data, off + 2)[0]
        off += 4
    return _ethertype(et, off)


def linux_sll(data: bytes) -> tuple[int, int] | str:
    """Linux cooked capture v1: 16-byte header, protocol in its last two bytes."""
    if len(data) < 16:
        return "truncated_link"
    return _ethertype(_H.unpack_from(data, 14)[0], 16)


def linux_sll2(data: bytes) -> tuple[int, int] | str:
    """Linux cooked capture v2: 20-byte header, protocol in its first two bytes."""
    if len(data) < 20:
        return "truncated_link"
    return _ethertype(_H.unpack_from(data, 0)[0], 20)



def bsd_null(data: bytes, big_endian: bool) -> tuple[int, int] | str:
    if len(data) < 4:
        return "truncated_link"
    fam = struct.unpack_from(">I" if big_endian else "=I", data, 0)[0]
    if fam == AF_INET:
        return 4, 4
    if fam in BSD_AF_INET6:
        return 4, 6
    return "non_ip"


def nflog(data: bytes) -> tuple[int, int] | str:
    """NFLOG: a 4-byte header (family, version, resource id), then TLVs (LE u16 length, LE u16 type),
    each padded to 4 bytes; the packet is the payload of TLV type 9."""
    if len(data) < 4:
        return "truncated_link"
    family = data[0]
    off = 4
    n = len(data)
    while off + 4 <= n:
        tlv_len, tlv_type = _HH_LE.unpack_from(data, off)
        if tlv_len < 4 or off + tlv_len > n:
            return "bad_nflog_tlv"
        if (tlv_type & 0x7FFF) == NFULA_PAYLOAD:
            version = 4 if family == AF_INET else 6 if family == AF_INET6 else 0
            return off + 4, version
        off += (tlv_len + 3) & ~3
    return "nflog_no_payload"


def ip_start(linktype: int, data: bytes) -> tuple[int, int] | str:
    """Offset of the IP header in a frame and the expected IP version (0: from the header)."""
    if linktype == LINKTYPE_ETHERNET:
        return ethernet(data)
    if linktype == LINKTYPE_LINUX_SLL2:
        return linux_sll2(data)
    if linktype == LINKTYPE_LINUX_SLL:
        return linux_sll(data)
    if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OLD, LINKTYPE_RAW_OLD2):
        return 0, 0
    if linktype == LINKTYPE_IPV4:
        return 0, 4
    if linktype == LINKTYPE_IPV6:
        return 0, 6
    if linktype == LINKTYPE_NFLOG:
        return nflog(data)
    if linktype == LINKTYPE_NULL:
        return bsd_null(data, big_endian=False)
    if linktype == LINKTYPE_LOOP:
        return bsd_null(data, big_endian=True)
    return "unknown_linktype"
