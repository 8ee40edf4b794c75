"""QUIC packet headers of one UDP payload: the invariants (RFC 8999) and the v1/v2 long and short headers
(RFC 9000 section 17, RFC 9369 section 3.2).

Why: rstscope sees the client-to-server direction only. Of a QUIC packet a passive observer can read the
header form, the version, the packet type (long headers), the connection IDs and the packet sizes; the
rest is encrypted (header protection hides even the packet number length). This module reads exactly
that and nothing else: a ``QuicPacketHeader`` holds header fields and offsets, never payload bytes. The
one payload a passive observer can decrypt, the client Initial, is the business of ``quic_initial``.

A datagram may carry several coalesced long-header packets followed by at most one short-header packet
(RFC 9000 section 12.2). Packets of an unknown version, Version Negotiation and Retry packets have no
Length field: they extend to the end of the datagram. Malformed input raises ``QuicDecodeError`` and
nothing else; its ``reason`` is a short counter name.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import NamedTuple

QUIC_VERSION_NEGOTIATION = 0x00000000
QUIC_VERSION_1 = 0x00000001  # RFC 9000
QUIC_VERSION_2 = 0x6B3343CF  # RFC 9369 section 3.1
SUPPORTED_VERSIONS = frozenset((QUIC_VERSION_1, QUIC_VERSION_2))

HEADER_FORM_BIT = 0x80  # RFC 8999 5.1 / 5.2: 1 = long header
FIXED_BIT = 0x40  # RFC 9000 17.2 ("QUIC Bit"); may be greased to 0 (RFC 9287)
LONG_PACKET_TYPE_MASK = 0x30
MAX_CID_LEN_V1 = 20  # RFC 9000 17.2: v1 (and v2) connection IDs are at most 20 bytes
MAX_CID_LEN_INVARIANT = 255  # RFC 8999 5.1: any version may use up to 255
SAMPLE_OFFSET = 4  # RFC 9001 5.4.2: the header protection sample starts 4 bytes after the packet number
SAMPLE_LEN = 16
RETRY_INTEGRITY_TAG_LEN = 16  # RFC 9001 5.8

# The invariant part of a long header (RFC 8999 5.1): first byte, version, DCID length; then the DCID,
# the SCID length and the SCID, whose sizes the table cannot know.
LONG_HEADER = (("first", "B"), ("version", "I"), ("dcid_len", "B"))


def _compile(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct(">" + "".join(fmt for _, fmt in fields))


_LONG = _compile(LONG_HEADER)


class QuicDecodeError(ValueError):
    """Input that is not a well-formed QUIC packet (or Initial payload, or ClientHello); ``reason`` is a
    short snake_case name, usable as a counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class QuicPacketType(StrEnum):
    INITIAL = "initial"
    ZERO_RTT = "zero_rtt"
    HANDSHAKE = "handshake"
    RETRY = "retry"
    VERSION_NEGOTIATION = "version_negotiation"
    ONE_RTT = "one_rtt"


# The two Long Packet Type bits per version: RFC 9000 table 5, RFC 9369 section 3.2.
LONG_PACKET_TYPES: dict[int, tuple[QuicPacketType, QuicPacketType, QuicPacketType, QuicPacketType]] = {
    QUIC_VERSION_1: (QuicPacketType.INITIAL, QuicPacketType.ZERO_RTT, QuicPacketType.HANDSHAKE,
                     QuicPacketType.RETRY),
    QUIC_VERSION_2: (QuicPacketType.RETRY, QuicPacketType.INITIAL, QuicPacketType.ZERO_RTT,
                     QuicPacketType.HANDSHAKE),
}


class QuicPacketHeader(NamedTuple):
    """The header of one QUIC packet in a datagram. Offsets count from the start of the datagram."""

    offset: int  # where the packet starts in the datagram
    long_header: bool  # header form: True long, False short
    version: int | None  # None for a short header
    packet_type: QuicPacketType | None  # None: a long header of a version this module does not know
    fixed_bit: bool  # the QUIC Bit (0 is legal when greased, RFC 9287; meaningless in Version Negotiation)
    dcid: bytes  # Destination Connection ID
    scid: bytes | None  # Source Connection ID; None for a short header
    token_len: int | None  # Initial only: the Token Length (the token itself is not kept)
    length: int | None  # the Length field (packet number + payload); None when the packet has none
    size: int  # bytes of the packet on the wire
    pn_offset: int | None  # where the (protected) packet number starts; None for Retry, VN, unknown versions


def read_varint(data: bytes, off: int, end: int) -> tuple[int, int]:
    """A variable-length integer (RFC 9000 section 16) at ``off``: (value, offset after it)."""
    if off >= end:
        raise QuicDecodeError("truncated_varint")
    first = data[off]
    n = 1 << (first >> 6)
    if off + n > end:
        raise QuicDecodeError("truncated_varint")
    value = first & 0x3F
    for i in range(off + 1, off + n):
        value = (value << 8) | data[i]
    return value, off + n


def _long_packet(data: bytes, off: int) -> QuicPacketHeader:
    n = len(data)
    if n < off + _LONG.size:
        raise QuicDecodeError("truncated_long_header")
    first, version, dcid_len = _LONG.unpack_from(data, off)
    known = version in SUPPORTED_VERSIONS
    if dcid_len > (MAX_CID_LEN_V1 if known else MAX_CID_LEN_INVARIANT):
        raise QuicDecodeError("cid_too_long")
    p = off + _LONG.size
    if n < p + dcid_len + 1:
        raise QuicDecodeError("truncated_cid")
    dcid = data[p:p + dcid_len]
    p += dcid_len
    scid_len = data[p]
    p += 1
    if scid_len > (MAX_CID_LEN_V1 if known else MAX_CID_LEN_INVARIANT):
        raise QuicDecodeError("cid_too_long")
    if n < p + scid_len:
        raise QuicDecodeError("truncated_cid")
    scid = data[p:p + scid_len]
    p += scid_len
    fixed = bool(first & FIXED_BIT)
    if version == QUIC_VERSION_NEGOTIATION:
        # RFC 8999 6: a list of 32-bit versions to the end of the datagram
        if (n - p) % 4 or n == p:
            raise QuicDecodeError("bad_version_negotiation")
        return QuicPacketHeader(off, True, version, QuicPacketType.VERSION_NEGOTIATION, fixed, dcid, scid,
                                None, None, n - off, None)
    if not known:
        return QuicPacketHeader(off, True, version, None, fixed, dcid, scid, None, None, n - off, None)
    ptype = LONG_PACKET_TYPES[version][(first & LONG_PACKET_TYPE_MASK) >> 4]
    if ptype is QuicPacketType.RETRY:
        if n - p < RETRY_INTEGRITY_TAG_LEN:
            raise QuicDecodeError("truncated_retry")
        return QuicPacketHeader(off, True, version, ptype, fixed, dcid, scid, None, None, n - off, None)
    token_len: int | None = None
    if ptype is QuicPacketType.INITIAL:
        token_len, p = read_varint(data, p, n)
        if n - p < token_len:
            raise QuicDecodeError("truncated_token")
        p += token_len
    length, p = read_varint(data, p, n)
    if n - p < length:
        raise QuicDecodeError("length_exceeds_datagram")
    if length < SAMPLE_OFFSET + SAMPLE_LEN:  # RFC 9001 5.4.2: too short to hold a header protection sample
        raise QuicDecodeError("packet_too_short")
    return QuicPacketHeader(off, True, version, ptype, fixed, dcid, scid, token_len, length, p + length - off, p)


def _short_packet(data: bytes, off: int, dcid_len: int) -> QuicPacketHeader:
    p = off + 1 + dcid_len
    if len(data) - p < SAMPLE_OFFSET + SAMPLE_LEN:
        raise QuicDecodeError("packet_too_short")
    return QuicPacketHeader(off, False, None, QuicPacketType.ONE_RTT, bool(data[off] & FIXED_BIT),
                            data[off + 1:p], None, None, None, len(data) - off, p)


def parse_datagram(payload: bytes, short_dcid_len: int = 0) -> list[QuicPacketHeader]:
    """The headers of the QUIC packets of one UDP payload, in order.

    ``short_dcid_len``: a short header does not carry the length of its Destination Connection ID; only
    the endpoints know it. A passive observer learns it from the connection's long headers (the client's
    Handshake packets carry the same DCID as its 1-RTT packets) and passes it here; it is used only when
    the datagram starts with a short header (default 0: the DCID is then empty and the packet number
    offset is a lower bound). A short header coalesced after long headers takes the DCID length of the
    packet before it (RFC 9000 12.2: coalesced packets share the Destination Connection ID).

    Zero bytes after the last long-header packet are datagram padding, not a packet: they end the list.
    """
    if not 0 <= short_dcid_len <= MAX_CID_LEN_V1:
        raise ValueError("short_dcid_len must be 0..20")
    n = len(payload)
    if n == 0:
        raise QuicDecodeError("empty_datagram")
    out: list[QuicPacketHeader] = []
    off = 0
    while off < n:
        if payload[off] & HEADER_FORM_BIT:
            hdr = _long_packet(payload, off)
            out.append(hdr)
            off += hdr.size
            continue
        if out and not payload[off:].strip(b"\x00"):
            break  # padding to the end of the datagram
        out.append(_short_packet(payload, off, len(out[-1].dcid) if out else short_dcid_len))
        break
    return out


__all__ = [
    "LONG_PACKET_TYPES",
    "QUIC_VERSION_1",
    "QUIC_VERSION_2",
    "QUIC_VERSION_NEGOTIATION",
    "SUPPORTED_VERSIONS",
    "QuicDecodeError",
    "QuicPacketHeader",
    "QuicPacketType",
    "parse_datagram",
    "read_varint",
]
