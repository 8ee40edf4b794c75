"""Packet records on the wire: msgpack arrays with an explicit schema version (docs/wire-formats.md).

Schema 2 (what edges write):
  [2, 2, edge, [record, record, ...], run, seq]  (kind 2: a batch of packet records from edge ``edge``,
  all for one partition; ``run`` (a random id of the edge process) and ``seq`` (the batch's number on
  its partition in that run, from 0) let a worker drop a batch the transport wrote twice; both are
  optional, batches of older edges have neither), each record [ts, ip_version, src, dst, sport, dport,
  flags, seq, ack, ipid, ttl, window, payload_len, opt_len], optionally followed by [country, asn]: the
  client's geolocation, looked up at the edge before its address was truncated or hashed
  (``rstscope edge --geo DIR --client-ip ...``)
  [2, 1, ts, edge, eof]  (kind 1: a watermark: no packet older than ``ts`` follows from ``edge``)
  [2, 3, edge, [entry, entry, ...], run, seq]  (kind 3: a mixed batch, what an edge sends for a partition
  whose batch holds QUIC datagrams: TCP and QUIC records in capture order, so that neither overtakes
  the other's event time), each entry [6, <TCP record fields>] or a QUIC datagram record
  [17, ...] (codecs/quic.py); run and seq as in kind 2
Schema 1 (still read): [1, 0, <record fields>] one packet per message; [1, 1, ts, edge, eof] a watermark.
Arrays rather than maps: the field names are the schema, and a record is ~45 bytes instead of ~150.
Batches because a Kafka message costs a Faust worker ~60 µs whatever it holds: hundreds of records per
message make that cost per record small (docs/performance.md).
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import msgpack

from rstscope.codecs.errors import MalformedRecord, UnknownSchemaVersion
from rstscope.codecs.quic import TRANSPORT_UDP, check_quic
from rstscope.packet import PacketRecord
from rstscope.quic.packet import QuicDatagram

SCHEMA_VERSION = 2  # what this writer writes; readers accept READ_VERSIONS
READ_VERSIONS = (1, 2)
KIND_PACKET = 0  # schema 1 only
KIND_WATERMARK = 1
KIND_BATCH = 2  # schema 2
KIND_MIXED = 3  # schema 2: TCP and QUIC records
TRANSPORT_TCP = 6  # the first item of a TCP record in a mixed batch (the IP protocol number)
MAX_BATCH_RECORDS = 10_000  # a reader refuses larger batches (an edge sends at most its --batch-records)
MAX_EDGE_ID = 128  # characters of an edge id
_FIELDS = 14  # a packet record's fields (without the optional country, asn)
_PACKET_LEN = 2 + _FIELDS  # schema 1: version and kind first
_U32 = 1 << 32
MAX_TS = 1e11  # seconds since the epoch: about the year 5100
MAX_NUMBER = 1 << 63  # a batch's run id and sequence number are below this


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
    return pkt.packed_key


def partition_of(key: bytes, partitions: int) -> int:
    """The packets partition of a 4-tuple (its ``packet_key``): every packet of a connection, from any
    edge, lands on one partition, so a worker can keep one connection table per partition."""
    return zlib.crc32(key) % partitions


def packet_fields(pkt: PacketRecord, geo: EdgeGeo | None = None) -> list[Any]:
    """One packet as a batch's record (a list, for ``encode_batch``): a record's fields are
    PacketRecord's, in its order (tests/test_codecs.py holds them together)."""
    fields: list[Any] = list(pkt)
    if geo is not None:
        fields += [geo.country, geo.asn]
    return fields


def encode_batch(edge: str, records: list[Any], number: tuple[int, int] | None = None,
                 mixed: bool = False) -> bytes:
    """A schema-2 batch message: ``records`` from ``packet_fields``, all for one partition; ``number``:
    (run, seq), the batch's number (see the module docstring). ``mixed``: some records are QUIC
    datagrams (tuples from ``codecs.quic.quic_fields``): a kind-3 message, TCP records tagged."""
    if mixed:
        entries = [r if type(r) is tuple else [TRANSPORT_TCP, *r] for r in records]
        head = [SCHEMA_VERSION, KIND_MIXED, edge, entries]
    else:
        head = [SCHEMA_VERSION, KIND_BATCH, edge, records]
    out: bytes = msgpack.packb(head if number is None else [*head, *number], use_bin_type=True)
    return out


def encode_packet(pkt: PacketRecord, geo: EdgeGeo | None = None, edge: str = "") -> bytes:
    """One packet as a message of its own (a batch of one)."""
    return encode_batch(edge, [packet_fields(pkt, geo)])


def encode_packet_v1(pkt: PacketRecord, geo: EdgeGeo | None = None) -> bytes:
    """A schema-1 packet message (what edges wrote before batches; readers still accept it)."""
    out: bytes = msgpack.packb([1, KIND_PACKET, *packet_fields(pkt, geo)], use_bin_type=True)
    return out


def encode_watermark(wm: Watermark) -> bytes:
    out: bytes = msgpack.packb([SCHEMA_VERSION, KIND_WATERMARK, wm.ts, wm.source, wm.eof], use_bin_type=True)
    return out


class Batch(NamedTuple):
    """A decoded packet message: its edge, its good records (with the edge's geolocation, if any) and
    the bad ones (index in the batch, why): one bad record does not cost its neighbours."""

    edge: str
    packets: list[tuple[PacketRecord, EdgeGeo | None]]
    errors: list[tuple[int, MalformedRecord]]
    run: int | None = None  # the edge process's run id, and the batch's number on its partition in that run
    seq: int | None = None
    # a mixed batch's QUIC datagrams: (how many of ``packets`` come before it, the datagram, geolocation)
    quic: tuple[tuple[int, QuicDatagram, EdgeGeo | None], ...] = ()


def _check_geo(f: list[Any]) -> EdgeGeo | None:
    if len(f) == _FIELDS:
        return None
    if len(f) != _FIELDS + 2:
        raise MalformedRecord(f"packet record has {len(f)} fields, not {_FIELDS} or {_FIELDS + 2}")
    country, asn = f[_FIELDS:]
    if not (isinstance(country, str) and len(country) == 2 and type(asn) is int and 0 <= asn < _U32):
        raise MalformedRecord("bad edge geolocation (country, asn)")
    return EdgeGeo(country, asn)


def check_record(f: Any) -> tuple[PacketRecord, EdgeGeo | None]:
    """One packet record's fields, checked (types, ranges, address lengths); raises MalformedRecord."""
    if type(f) is not list:  # what msgpack makes of an array (exactly list, as its ints and floats below)
        raise MalformedRecord("a packet record is not an array")
    geo = None if len(f) == _FIELDS else _check_geo(f)
    (ts, ver, src, dst, sport, dport, flags, seq, ack, ipid, ttl, win, plen, olen) = f if geo is None else f[:_FIELDS]
    tt = type(ts)
    if tt is not float and tt is not int:  # a bool is neither
        raise MalformedRecord("ts is not a number")
    if not 0.0 <= ts < MAX_TS:  # also false for NaN: a poisoned event time would stall a table
        raise MalformedRecord(f"ts {ts!r} is not a plausible capture time")
    if ver not in (4, 6):
        raise MalformedRecord(f"ip_version {ver!r} is not 4 or 6")
    alen = 4 if ver == 4 else 16
    if not (isinstance(src, bytes) and isinstance(dst, bytes) and len(src) == alen and len(dst) == alen):
        raise MalformedRecord("addresses do not match the IP version")
    if not (type(sport) is int and type(dport) is int and type(flags) is int and type(seq) is int
            and type(ack) is int and type(ttl) is int and type(win) is int and type(plen) is int
            and type(olen) is int):  # spelled out: a worker checks every record, and this is its hot loop
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
    # tuple.__new__: PacketRecord(...) without the namedtuple's argument handling (a worker's hot loop)
    return tuple.__new__(PacketRecord, (ts if tt is float else float(ts), ver, src, dst, sport, dport, flags, seq,
                                        ack, ipid, ttl, win, plen, olen)), geo


def decode_message(data: bytes) -> Batch | Watermark:
    """Decode one packets-topic message (schema 1 or 2). Raises UnknownSchemaVersion, or MalformedRecord
    when the message as a whole is bad; a bad record inside a good batch is in ``Batch.errors``."""
    try:
        f = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=64, max_str_len=256,
                            max_array_len=MAX_BATCH_RECORDS, max_map_len=16)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise MalformedRecord(f"not msgpack: {type(e).__name__}") from e
    if not isinstance(f, list) or len(f) < 2:
        raise MalformedRecord("not a msgpack array record")
    version, kind = f[0], f[1]
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise UnknownSchemaVersion(f"schema version {version!r} is not supported (this reader knows 1 and 2)")
    if kind == KIND_WATERMARK:
        if len(f) != 5 or not isinstance(f[2], (int, float)) or isinstance(f[2], bool) \
                or not isinstance(f[3], str) or not isinstance(f[4], bool) or not 0.0 <= f[2] < MAX_TS:
            raise MalformedRecord("bad watermark record")
        # schema 1 had no edge ids on packets (its watermark's source was a per-run name): all of a
        # schema-1 producer's records belong to the unnamed edge ""
        return Watermark(float(f[2]), f[3] if version == 2 else "", f[4])
    if version == 1 and kind == KIND_PACKET:
        return Batch("", [check_record(f[2:])], [])
    if version == 2 and kind in (KIND_BATCH, KIND_MIXED):
        if len(f) not in (4, 6) or not isinstance(f[2], str) or len(f[2]) > MAX_EDGE_ID \
                or not isinstance(f[3], list):
            raise MalformedRecord("bad batch header")
        run = seq = None
        if len(f) == 6:
            run, seq = f[4], f[5]
            if not (type(run) is int and type(seq) is int and 0 <= run < MAX_NUMBER and 0 <= seq < MAX_NUMBER):
                raise MalformedRecord("bad batch number (run, seq)")
        good: list[tuple[PacketRecord, EdgeGeo | None]] = []
        bad: list[tuple[int, MalformedRecord]] = []
        if kind == KIND_MIXED:
            return _mixed(f[2], f[3], run, seq)
        for i, rec in enumerate(f[3]):
            try:
                good.append(check_record(rec))
            except MalformedRecord as e:
                bad.append((i, e))
        return Batch(f[2], good, bad, run, seq)
    raise MalformedRecord(f"unknown record kind {kind!r} in schema {version}")


def _mixed(edge: str, entries: list[Any], run: int | None, seq: int | None) -> Batch:
    """A kind-3 batch: TCP records ([6, ...]) and QUIC datagram records ([17, ...]), each checked."""
    good: list[tuple[PacketRecord, EdgeGeo | None]] = []
    quic: list[tuple[int, QuicDatagram, EdgeGeo | None]] = []
    bad: list[tuple[int, MalformedRecord]] = []
    for i, e in enumerate(entries):
        try:
            if not isinstance(e, list) or not e or isinstance(e[0], bool):
                raise MalformedRecord("a mixed batch entry is not a tagged array")
            if e[0] == TRANSPORT_TCP:
                good.append(check_record(e[1:]))
            elif e[0] == TRANSPORT_UDP:
                dg, geo = check_quic(e)
                quic.append((len(good), dg, EdgeGeo(*geo) if geo is not None else None))
            else:
                raise MalformedRecord(f"unknown transport {e[0]!r} in a mixed batch")
        except MalformedRecord as err:
            bad.append((i, err))
    return Batch(edge, good, bad, run, seq, tuple(quic))


def decode_with_geo(data: bytes) -> tuple[PacketRecord | Watermark, EdgeGeo | None]:
    """Decode a message holding one packet (or a watermark) and the edge's geolocation of its client."""
    m = decode_message(data)
    if isinstance(m, Watermark):
        return m, None
    if m.errors:
        raise m.errors[0][1]
    if len(m.packets) != 1 or m.quic:
        raise MalformedRecord(f"a batch of {len(m.packets)} packets where one was expected")
    return m.packets[0]


def decode(data: bytes) -> PacketRecord | Watermark:
    """Decode a message holding one packet (or a watermark); raises UnknownSchemaVersion or MalformedRecord."""
    return decode_with_geo(data)[0]
