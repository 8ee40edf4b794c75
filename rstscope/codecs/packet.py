"""Packet records on the wire: msgpack arrays with an explicit schema version.

Layout (schema 1), one msgpack array:
  [1, 0, ts, ip_version, src, dst, sport, dport, flags, seq, ack, ipid, ttl, window, payload_len, opt_len]
  (kind 0: a packet), optionally followed by [country, asn]: the client's geolocation, looked up at the
  edge before its address was truncated or hashed (``rstscope edge --geo DIR --client-ip ...``)
  [1, 1, ts, source, eof]  (kind 1: a watermark from an edge producer; see docs/wire-formats.md)
Arrays rather than maps: the field names are the schema, and a record is ~45 bytes instead of ~150.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from rstscope.codecs.errors import MalformedRecord, UnknownSchemaVersion
from rstscope.packet import PacketRecord

SCHEMA_VERSION = 1
KIND_PACKET = 0
KIND_WATERMARK = 1
_PACKET_LEN = 16
_PACKET_GEO_LEN = 18
_U32 = 1 << 32
MAX_TS = 1e11  # seconds since the epoch: about the year 5100


class EdgeGeo(NamedTuple):
    """The client's geolocation as the edge saw it (ISO country, ASN), carried when addresses are hidden."""

    country: str
    asn: int


class Watermark(NamedTuple):
    """An edge producer's promise: no packet older than ``ts`` follows from ``source``."""

    ts: float
    source: str
    eof: bool


def packet_key(pkt: PacketRecord) -> bytes:
    """The Kafka key: the 4-tuple packed (protocol is always TCP), so a connection keeps a partition."""
    return pkt.src + pkt.sport.to_bytes(2, "big") + pkt.dst + pkt.dport.to_bytes(2, "big")


def encode_packet(pkt: PacketRecord, geo: EdgeGeo | None = None) -> bytes:
    fields = [SCHEMA_VERSION, KIND_PACKET, pkt.ts, pkt.version, pkt.src, pkt.dst, pkt.sport, pkt.dport,
              pkt.flags, pkt.seq, pkt.ack, pkt.ipid, pkt.ttl, pkt.window, pkt.payload_len, pkt.opt_len]
    if geo is not None:
        fields += [geo.country, geo.asn]
    out: bytes = msgpack.packb(fields, use_bin_type=True)
    return out


def encode_watermark(wm: Watermark) -> bytes:
    out: bytes = msgpack.packb([SCHEMA_VERSION, KIND_WATERMARK, wm.ts, wm.source, wm.eof], use_bin_type=True)
    return out


def _check_geo(f: list[Any]) -> EdgeGeo | None:
    if len(f) == _PACKET_LEN:
        return None
    if len(f) != _PACKET_GEO_LEN:
        raise MalformedRecord(f"packet record has {len(f)} fields, schema 1 has {_PACKET_LEN} or {_PACKET_GEO_LEN}")
    country, asn = f[_PACKET_LEN:]
    if not (isinstance(country, str) and len(country) == 2 and type(asn) is int and 0 <= asn < _U32):
        raise MalformedRecord("bad edge geolocation (country, asn)")
    return EdgeGeo(country, asn)


def _check_packet(f: list[Any]) -> PacketRecord:
    (_v, _k, ts, ver, src, dst, sport, dport, flags, seq, ack, ipid, ttl, win, plen, olen) = f[:_PACKET_LEN]
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise MalformedRecord("ts is not a number")
    if not 0.0 <= ts < MAX_TS:  # also false for NaN: a poisoned event time would stall a table
        raise MalformedRecord(f"ts {ts!r} is not a plausible capture time")
    if ver not in (4, 6):
        raise MalformedRecord(f"ip_version {ver!r} is not 4 or 6")
    alen = 4 if ver == 4 else 16
    if not (isinstance(src, bytes) and isinstance(dst, bytes) and len(src) == alen and len(dst) == alen):
        raise MalformedRecord("addresses do not match the IP version")
    ints = (sport, dport, flags, seq, ack, ttl, win, plen, olen)
    if not all(type(x) is int for x in ints):
        raise MalformedRecord("a header field is not an integer")
    if not (0 <= sport < 65536 and 0 <= dport < 65536 and 0 <= flags < 256 and 0 <= seq < _U32
            and 0 <= ack < _U32 and 0 <= ttl < 256 and 0 <= win < 65536 and 0 <= plen < 65536 * 4
            and 0 <= olen <= 40):
        raise MalformedRecord("a header field is out of range")
    if ver == 4:
        if type(ipid) is not int or not 0 <= ipid < 65536:
            raise MalformedRecord("IPv4 record without a valid ipid")
    elif ipid is not None:
        raise MalformedRecord("IPv6 record with an ipid")
    return PacketRecord(float(ts), ver, src, dst, sport, dport, flags, seq, ack, ipid, ttl, win, plen, olen)


def decode(data: bytes) -> PacketRecord | Watermark:
    """Decode one record; raises UnknownSchemaVersion or MalformedRecord."""
    return decode_with_geo(data)[0]


def decode_with_geo(data: bytes) -> tuple[PacketRecord | Watermark, EdgeGeo | None]:
    """Decode one record and the edge's geolocation of its client, if it carries one."""
    try:
        f = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=64, max_str_len=256,
                            max_array_len=64, max_map_len=16)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise MalformedRecord(f"not msgpack: {type(e).__name__}") from e
    if not isinstance(f, list) or len(f) < 2:
        raise MalformedRecord("not a msgpack array record")
    if f[0] != SCHEMA_VERSION:
        raise UnknownSchemaVersion(f"schema version {f[0]!r} is not supported (this reader knows 1)")
    if f[1] == KIND_PACKET:
        geo = _check_geo(f)
        return _check_packet(f), geo
    if f[1] == KIND_WATERMARK:
        if len(f) != 5 or not isinstance(f[2], (int, float)) or not isinstance(f[3], str) \
                or not isinstance(f[4], bool) or not 0.0 <= f[2] < MAX_TS:
            raise MalformedRecord("bad watermark record")
        return Watermark(float(f[2]), f[3], f[4]), None
    raise MalformedRecord(f"unknown record kind {f[1]!r}")
