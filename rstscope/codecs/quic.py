"""A QUIC datagram record on the wire (docs/wire-formats.md, "QUIC datagram records").

What leaves the edge of one client-to-server QUIC datagram: the datagram's IP/UDP header fields, one
short array per QUIC packet in it (type, version, DCID length, the opening packet's DCID tag, size,
flags) and, on the datagram that completed its attempt's ClientHello, the SNI (after the edge's SNI
policy) and ALPN. No payload bytes, no raw connection IDs. Inside a mixed batch (codecs.packet,
kind 3) the record is ``[17, ts, ip_version, src, dst, sport, dport, ttl, ipid, packets, hello]``,
optionally followed by ``country, asn`` (the edge's geolocation, as for TCP records).
"""

from __future__ import annotations

from typing import Any

from rstscope.codecs.errors import MalformedRecord
from rstscope.quic.packet import (
    BY_ATTEMPT,
    BY_OWN_DCID,
    DCID_TAG_LEN,
    MAX_ALPN,
    NOT_DECRYPTED,
    ONE_RTT,
    UNKNOWN,
    Hello,
    QuicDatagram,
    QuicPacketRecord,
)

TRANSPORT_UDP = 17  # the first item of a QUIC record in a mixed batch (the IP protocol number)
PTYPES = ("initial", "zero_rtt", "handshake", "retry", "version_negotiation", ONE_RTT, UNKNOWN)
_PTYPE_CODE = {p: i for i, p in enumerate(PTYPES)}
F_TOKEN, F_HELLO, F_CLOSE, F_BY_ATTEMPT, F_BY_OWN = 1, 2, 4, 8, 16
MAX_PACKETS = 64  # QUIC packets in one datagram (each is at least ~20 bytes of a <= 1500-byte datagram)
_FIELDS = 11  # with the leading 17, without the optional country, asn
_U32 = 1 << 32


def _flags(r: QuicPacketRecord) -> int:
    f = (F_TOKEN if r.token else 0) | (F_HELLO if r.hello else 0) | (F_CLOSE if r.close else 0)
    if r.decrypted == BY_ATTEMPT:
        f |= F_BY_ATTEMPT
    elif r.decrypted == BY_OWN_DCID:
        f |= F_BY_OWN
    return f


def quic_fields(dg: QuicDatagram, src: bytes, country_asn: tuple[str, int] | None = None) -> tuple[Any, ...]:
    """A datagram as a mixed batch's record (a tuple: the edge tells it from TCP's lists). ``src``: the
    client address as it may leave (``--client-ip``); the rest of the tuple is the records'."""
    r0 = dg.recs[0]
    packets = [[_PTYPE_CODE[r.ptype], r.version, r.dcid_len, r.dcid, r.size, _flags(r)] for r in dg.recs]
    hello = None if dg.hello is None else [dg.hello.sni, list(dg.hello.alpn)]
    out: tuple[Any, ...] = (TRANSPORT_UDP, r0.ts, r0.ip_version, src, r0.dst, r0.sport, r0.dport, r0.ttl, r0.ipid,
                            packets, hello)
    return out if country_asn is None else (*out, *country_asn)


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v < hi


def _packet(p: Any, head: tuple[Any, ...]) -> QuicPacketRecord:
    if not isinstance(p, list) or len(p) != 6:
        raise MalformedRecord("a QUIC packet is not an array of 6")
    code, version, dcid_len, tag, size, flags = p
    if not _is_int(code, 0, len(PTYPES)):
        raise MalformedRecord(f"QUIC packet type {code!r} is unknown")
    ptype = PTYPES[code]
    if ptype == ONE_RTT:
        if version is not None:
            raise MalformedRecord("a short-header packet with a version")
    elif not _is_int(version, 0, _U32):
        raise MalformedRecord("a long-header packet without a 32-bit version")
    if not (_is_int(dcid_len, 0, 256) and _is_int(size, 1, 65536) and _is_int(flags, 0, 32)):
        raise MalformedRecord("a QUIC packet field is not an integer in range")
    if not isinstance(tag, bytes) or len(tag) not in (0, DCID_TAG_LEN):
        raise MalformedRecord("a DCID tag is neither empty nor 8 bytes")
    by_attempt, by_own = bool(flags & F_BY_ATTEMPT), bool(flags & F_BY_OWN)
    if by_attempt and by_own:
        raise MalformedRecord("a packet decrypted both ways")
    decrypted = BY_ATTEMPT if by_attempt else BY_OWN_DCID if by_own else NOT_DECRYPTED
    if (flags & (F_HELLO | F_CLOSE)) and (not decrypted or ptype != "initial"):
        raise MalformedRecord("hello or close on a packet that was not a decrypted Initial")
    ts, ver, src, dst, sport, dport, ttl, ipid = head
    return QuicPacketRecord(ts, ver, src, dst, sport, dport, ptype, version, tag, size, ttl, ipid,
                            bool(flags & F_TOKEN), decrypted, bool(flags & F_HELLO), bool(flags & F_CLOSE), dcid_len)


def _hello(h: Any) -> Hello | None:
    if h is None:
        return None
    if not (isinstance(h, list) and len(h) == 2 and (h[0] is None or isinstance(h[0], str))
            and isinstance(h[1], list) and len(h[1]) <= MAX_ALPN and all(isinstance(a, str) for a in h[1])):
        raise MalformedRecord("bad hello (sni, alpn)")
    return Hello(h[0], tuple(h[1]))


def check_quic(f: list[Any]) -> tuple[QuicDatagram, tuple[str, int] | None]:
    """One QUIC record of a mixed batch, checked (types, ranges, lengths, flag combinations); raises
    MalformedRecord. Returns the datagram and the edge's (country, asn), if it sent them."""
    if len(f) == _FIELDS + 2:
        country, asn = f[_FIELDS:]
        if not (isinstance(country, str) and len(country) == 2 and _is_int(asn, 0, _U32)):
            raise MalformedRecord("bad edge geolocation (country, asn)")
        geo: tuple[str, int] | None = (country, asn)
    elif len(f) == _FIELDS:
        geo = None
    else:
        raise MalformedRecord(f"QUIC record has {len(f)} fields, not {_FIELDS} or {_FIELDS + 2}")
    _t, ts, ver, src, dst, sport, dport, ttl, ipid, packets, hello = f[:_FIELDS]
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not 0.0 <= ts < 1e11:
        raise MalformedRecord("ts is not a plausible capture time")
    if ver not in (4, 6) or isinstance(ver, bool):
        raise MalformedRecord(f"ip_version {ver!r} is not 4 or 6")
    alen = 4 if ver == 4 else 16
    if not (isinstance(src, bytes) and isinstance(dst, bytes) and len(src) == alen and len(dst) == alen):
        raise MalformedRecord("addresses do not match the IP version")
    if not (_is_int(sport, 0, 65536) and _is_int(dport, 0, 65536) and _is_int(ttl, 0, 256)):
        raise MalformedRecord("a header field is not an integer in range")
    if (ver == 4 and not _is_int(ipid, 0, 65536)) or (ver == 6 and ipid is not None):
        raise MalformedRecord("bad ipid for the IP version")
    if not isinstance(packets, list) or not 1 <= len(packets) <= MAX_PACKETS:
        raise MalformedRecord(f"a datagram holds 1..{MAX_PACKETS} QUIC packets")
    head = (float(ts), ver, src, dst, sport, dport, ttl, ipid)
    recs = tuple(_packet(p, head) for p in packets)
    return QuicDatagram(recs, _hello(hello)), geo
