"""Packet records on the wire: round trips, versions, and typed errors for garbage."""

from __future__ import annotations

import msgpack
import pytest
from builders import psh, syn

from rstscope.codecs import MalformedRecord, UnknownSchemaVersion
from rstscope.codecs.packet import Watermark, decode, encode_packet, encode_watermark, packet_key

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
    data = msgpack.packb([2, 0, 1.0])
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
    from rstscope.codecs.packet import EdgeGeo, decode_with_geo

    p = psh(10)
    assert decode_with_geo(encode_packet(p, EdgeGeo("DE", 3320))) == (p, EdgeGeo("DE", 3320))
    assert decode_with_geo(encode_packet(p)) == (p, None)
    assert decode(encode_packet(p, EdgeGeo("DE", 3320))) == p


@pytest.mark.parametrize("extra", [["DEU", 1], ["DE", -1], [1, 2], ["DE"]])
def test_bad_edge_geo(extra):
    f = msgpack.unpackb(encode_packet(psh(10)))
    with pytest.raises(MalformedRecord):
        decode(msgpack.packb(f + extra))


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
