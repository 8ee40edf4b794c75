"""Packet records on the wire: round trips, versions, and typed errors for garbage."""

from __future__ import annotations

import zlib
from collections import Counter

import msgpack
import pytest
from builders import psh, syn

from rstscope.codecs import MalformedRecord, UnknownSchemaVersion
from rstscope.codecs.packet import (
    MAX_BATCH_RECORDS,
    Batch,
    EdgeGeo,
    Watermark,
    decode,
    decode_message,
    encode_batch,
    encode_packet,
    encode_packet_v1,
    encode_watermark,
    packet_fields,
    packet_key,
    partition_of,
)
from rstscope.packet import PacketRecord

V6C = bytes(15) + b"\x01"
V6S = bytes(15) + b"\x02"


def test_round_trip_v4_and_v6():
    for p in (psh(123, ipid=7), syn(src=V6C, dst=V6S)):
        assert decode(encode_packet(p)) == p


def test_record_is_small_and_has_no_payload():
    p = psh(1400)
    data = encode_packet(p)
    assert len(data) < 60
    assert b"x" * 10 not in data


def test_watermark_round_trip():
    w = Watermark(1.5, "edge-1", True)
    assert decode(encode_watermark(w)) == w


def test_key_is_the_tuple():
    port = (40000).to_bytes(2, "big")
    assert packet_key(syn()) == bytes([10, 0, 0, 1]) + port + bytes([10, 0, 0, 2]) + (443).to_bytes(2, "big")


def test_unknown_version():
    data = msgpack.packb([3, 2, "e", []])
    with pytest.raises(UnknownSchemaVersion):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"", b"\xc1", b"\x93\x01", encode_packet(syn())[:-3], msgpack.packb({"a": 1}),
        msgpack.packb([1, 0, 1.0, 4, b"\x00" * 4]),  # too short
        msgpack.packb([1, 0, 1.0, 4, b"\x00" * 16, b"\x00" * 4, 1, 2, 2, 0, 0, 5, 64, 100, 0, 0]),  # addr size
        msgpack.packb([1, 0, 1.0, 4, b"\x00" * 4, b"\x00" * 4, 70000, 2, 2, 0, 0, 5, 64, 100, 0, 0]),  # port
        msgpack.packb([1, 0, 1.0, 6, b"\x00" * 16, b"\x00" * 16, 1, 2, 2, 0, 0, 5, 64, 100, 0, 0]),  # v6 ipid
        msgpack.packb([1, 0, "x", 4, b"\x00" * 4, b"\x00" * 4, 1, 2, 2, 0, 0, 5, 64, 100, 0, 0]),  # ts
        msgpack.packb([1, 9]),
    ],
)
def test_malformed(data):
    with pytest.raises(MalformedRecord):
        decode(data)


def test_errors_carry_a_reason_for_counters():
    assert MalformedRecord.reason == "malformed_record"
    assert UnknownSchemaVersion.reason == "unknown_schema_version"


def test_edge_geo_round_trip():
    from rstscope.codecs.packet import decode_with_geo

    p = psh(10)
    assert decode_with_geo(encode_packet(p, EdgeGeo("DE", 3320))) == (p, EdgeGeo("DE", 3320))
    assert decode_with_geo(encode_packet(p)) == (p, None)
    assert decode(encode_packet(p, EdgeGeo("DE", 3320))) == p


@pytest.mark.parametrize("extra", [["DEU", 1], ["DE", -1], [1, 2], ["DE"]])
def test_bad_edge_geo(extra):
    f = msgpack.unpackb(encode_packet(psh(10)))
    f[3][0] += extra
    with pytest.raises(MalformedRecord):
        decode(msgpack.packb(f))


def test_batch_round_trip_with_edge_and_geo():
    pkts = [syn(), psh(10, ipid=9), syn(src=V6C, dst=V6S)]
    geos = [None, EdgeGeo("DE", 3320), None]
    m = decode_message(encode_batch("edge-7", [packet_fields(p, g) for p, g in zip(pkts, geos, strict=True)]))
    assert m == Batch("edge-7", list(zip(pkts, geos, strict=True)), [])


def test_one_bad_record_does_not_cost_the_batch():
    good = packet_fields(syn())
    bad = list(good)
    bad[1] = 5  # ip_version
    m = decode_message(encode_batch("e", [good, bad, good, "x"]))
    assert isinstance(m, Batch)
    assert [p for p, _g in m.packets] == [syn(), syn()]
    assert [i for i, _e in m.errors] == [1, 3]
    assert all(isinstance(e, MalformedRecord) for _i, e in m.errors)


@pytest.mark.parametrize("data", [
    msgpack.packb([2, 2, "e"]),  # no records
    msgpack.packb([2, 2, 7, []]),  # edge id not a string
    msgpack.packb([2, 2, "e" * 200, []]),  # edge id too long
    msgpack.packb([2, 2, "e", [[0]] * (MAX_BATCH_RECORDS + 1)]),  # too many records
    msgpack.packb([2, 0, *packet_fields(syn())]),  # schema 2 has no single-packet kind
])
def test_bad_batches(data):
    with pytest.raises(MalformedRecord):
        decode_message(data)


def test_schema_1_is_still_read():
    p = psh(5, ipid=3)
    assert decode_message(encode_packet_v1(p)) == Batch("", [(p, None)], [])
    # schema 1: the unnamed edge
    assert decode_message(msgpack.packb([1, 1, 2.5, "old-edge", False])) == Watermark(2.5, "", False)


def test_partition_of_is_stable_and_spreads():
    """Edges on different hosts must agree: the partition is a fixed function of the key."""
    assert partition_of(packet_key(syn()), 8) == zlib.crc32(packet_key(syn())) % 8
    keys = [packet_key(syn(sport=40000 + i)) for i in range(4000)]
    counts = Counter(partition_of(k, 8) for k in keys)
    assert len(counts) == 8 and min(counts.values()) > 350


def test_record_fields_match_the_wire_format_doc() -> None:
    """The connection record has one definition (core.record.ConnectionRecord); the doc follows it."""
    import re
    from pathlib import Path

    from rstscope.core.record import ConnectionRecord

    doc = (Path(__file__).resolve().parent.parent / "docs/wire-formats.md").read_text()
    section = doc.split("## Connection record", 1)[1].split("\n## ", 1)[0]
    documented: list[str] = []
    for row in re.findall(r"^\| ([a-z_, ]+) \|", section, re.M):
        documented += [f.strip() for f in row.split(",") if f.strip() != "field"]
    assert sorted(documented) == sorted(ConnectionRecord.__annotations__)


def test_a_record_is_the_packet_records_fields_in_order() -> None:
    """packet_fields is `list(pkt)`: the wire order is PacketRecord's field order (docs/wire-formats.md)."""
    assert PacketRecord._fields == ("ts", "version", "src", "dst", "sport", "dport", "flags", "seq", "ack", "ipid",
                                    "ttl", "window", "payload_len", "opt_len")
    p = psh(10, ipid=3)
    assert packet_fields(p) == [p.ts, 4, p.src, p.dst, p.sport, p.dport, p.flags, p.seq, p.ack, 3, p.ttl, p.window,
                                10, p.opt_len]


@pytest.mark.parametrize("index, value, ok", [
    (0, True, False), (0, "1", False), (0, float("nan"), False), (0, -1.0, False), (0, 1_700_000_000, True),
    (1, 5, False), (2, b"abc", False), (4, 65536, False), (4, 1.0, False), (6, 256, False), (7, 2**32, False),
    (9, None, False), (9, 65536, False), (10, True, False), (12, -1, False), (13, 41, False),
])
def test_each_field_is_checked(index, value, ok):
    """A record's fields: types (a bool is never a number) and ranges; an int time reads as a float."""
    rec = packet_fields(syn())
    rec[index] = value
    m = decode_message(encode_batch("e", [rec]))
    assert (len(m.packets), len(m.errors)) == ((1, 0) if ok else (0, 1))
    if ok and index == 0:
        assert type(m.packets[0][0].ts) is float and m.packets[0][0].ts == 1_700_000_000.0
