"""QUIC through the edge and the worker stage, without Kafka (issue 17).

The edge's QUIC gate (reader at the edge) -> mixed batches on the wire -> ConnectionStage's QUIC
attempt table gives exactly the records of the offline `rstscope quic` (which composes the same reader
and table), and the TCP records of `rstscope analyze`, for one capture holding both. Plus the wire
format (round trip, malformed input) and the ack/pin discipline for QUIC attempts.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest

from rstscope.codecs.errors import MalformedRecord
from rstscope.codecs.packet import (
    KIND_MIXED,
    Batch,
    EdgeGeo,
    Watermark,
    decode_message,
    encode_batch,
    encode_watermark,
    packet_fields,
)
from rstscope.codecs.quic import quic_fields
from rstscope.config import Topology
from rstscope.direction import Direction
from rstscope.edge.producer import Edge
from rstscope.offline import Analyzer, Options
from rstscope.quic.offline import ServerSide, classify_files
from rstscope.quic.packet import DCID_TAG_LEN, QuicDatagram
from rstscope.quic.reader import QuicReader
from rstscope.quic.udp import decode_udp
from rstscope.sampling import Gate, QuicGate, Sampler
from rstscope.streams.connection_agent import ConnectionStage
from tests.quic_mix import QUIC_PCAP, QUIC_SERVERS, SERVERS, TCP_PORTS, mixed_capture

PARTITIONS = 8
FAR = 4e9  # the stage's wall clock: no record is "ahead" of it


def _key(r: Any) -> str:
    return json.dumps(r, sort_keys=True)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixed_capture(tmp_path_factory.mktemp("qmix") / "mixed.pcap")


def _bed_datagrams() -> list[QuicDatagram]:
    from rstscope.capture.files import FileStats, read_frames

    side = ServerSide(QUIC_SERVERS, (443,))
    reader = QuicReader()
    out = []
    for f in read_frames(QUIC_PCAP, FileStats(str(QUIC_PCAP))):
        dg = decode_udp(f.ts, f.linktype, f.data)
        if isinstance(dg, str) or not side.is_server(dg.dst, dg.dport):
            continue
        got = reader.read(dg)
        if not isinstance(got, str):
            out.append(got)
    return out


# -- the split: what the reader hands on ----------------------------------------------------------------


def test_the_reader_hands_on_header_facts_only() -> None:
    dgs = _bed_datagrams()
    assert len(dgs) == 199  # every datagram the offline path used
    recs = [r for d in dgs for r in d.recs]
    assert all(len(r.dcid) in (0, DCID_TAG_LEN) for r in recs)  # a tag on openers, never a DCID
    assert all(0 <= r.dcid_len <= 20 for r in recs)
    hellos = [d.hello for d in dgs if d.hello is not None]
    assert hellos and all(h.sni is None or len(h.sni) == 16 for h in hellos)  # hashed by default
    assert {a for h in hellos for a in h.alpn} == {"rstscope-echo"}


# -- the wire ----------------------------------------------------------------------------------------------


def test_quic_datagrams_round_trip_in_a_mixed_batch() -> None:
    dgs = _bed_datagrams()
    from rstscope.packet import PacketRecord

    tcp = PacketRecord(dgs[0].recs[0].ts, 4, b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1234, 80, 2, 7, 0, 1, 64,
                       1000, 0, 0)
    geo = EdgeGeo("DE", 3320)
    entries: list[Any] = [packet_fields(tcp)]
    for i, d in enumerate(dgs):
        r0 = d.recs[0]
        entries.append(quic_fields(d, r0.src, (geo.country, geo.asn) if i % 2 else None))
    entries.append(packet_fields(tcp, geo))
    m = decode_message(encode_batch("e1", entries, (5, 0), mixed=True))
    assert isinstance(m, Batch) and m.errors == [] and (m.run, m.seq) == (5, 0)
    assert [p for p, _g in m.packets] == [tcp, tcp] and [g for _p, g in m.packets] == [None, geo]
    assert [i for i, _d, _g in m.quic] == [1] * len(dgs)  # each after the first TCP record, before the second
    assert [d for _i, d, _g in m.quic] == dgs
    assert [g for _i, _d, g in m.quic] == [geo if i % 2 else None for i in range(len(dgs))]
    assert msgpack.unpackb(encode_batch("e1", entries, mixed=True))[1] == KIND_MIXED
    # a batch without QUIC stays kind 2, byte for byte as before
    assert msgpack.unpackb(encode_batch("e1", [packet_fields(tcp)]))[1] == 2


def _good() -> list[Any]:
    d = _bed_datagrams()[0]
    return list(quic_fields(d, d.recs[0].src))


def _bad_variants() -> list[tuple[str, list[Any]]]:
    g = _good()
    pkt = g[9][0]
    out: list[tuple[str, list[Any]]] = []

    def v(name: str, i: int, value: Any) -> None:
        f = list(g)
        f[i] = value
        out.append((name, f))

    def p(name: str, j: int, value: Any) -> None:
        f = list(g)
        q = list(pkt)
        q[j] = value
        f[9] = [q]
        out.append((name, f))

    v("ts nan", 1, float("nan")), v("ts str", 1, "x"), v("ip version", 2, 5), v("src len", 3, b"\x01")
    v("dport", 6, 70000), v("ttl", 7, 300), v("ipid v4", 8, None), v("no packets", 9, [])
    v("packets not list", 9, 3), v("hello shape", 10, ["x"]), v("alpn type", 10, [None, [1]])
    p("ptype", 0, 9), p("version none on long", 1, None), p("dcid_len", 2, 256), p("tag len", 3, b"\x00" * 5)
    p("size 0", 4, 0), p("flags", 5, 64), p("both decrypted", 5, 8 | 16), p("hello undecrypted", 5, 2)
    p("short", 0, 5)  # a 1-RTT packet with a version
    out.append(("field count", g[:-1]))
    out.append(("geo", [*g, "DEU", 1]))
    return out


@pytest.mark.parametrize("name,fields", _bad_variants(), ids=[n for n, _ in _bad_variants()])
def test_malformed_quic_records_are_rejected_alone(name: str, fields: list[Any]) -> None:
    good = _good()
    m = decode_message(msgpack.packb([2, KIND_MIXED, "e", [good, fields, [99, 1], "x"]], use_bin_type=True))
    assert isinstance(m, Batch)
    assert len(m.quic) == 1 and [i for i, _e in m.errors] == [1, 2, 3]
    assert all(isinstance(e, MalformedRecord) for _i, e in m.errors)


# -- the edge and the stage ------------------------------------------------------------------------------


class _Producer:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, dict[str, Any]]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.messages.append((value, kw))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def _edge(path: Path, topo: Topology) -> tuple[Edge, dict[int, list[bytes]]]:
    sampler = Sampler(1.0)
    gate = Gate(Direction(SERVERS, TCP_PORTS), sampler, topo.window)
    quic = QuicGate(SERVERS, [443], sampler, topo.window)
    prod = _Producer()
    edge = Edge(prod, "packets", PARTITIONS, gate, "edge-1", watermark_interval=1.0, quic=quic)
    edge.run([path])
    parts: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for value, kw in prod.messages:
        parts[kw["partition"]].append(value)
    return edge, parts


def _offline(path: Path, topo: Topology) -> tuple[list[Any], list[Any]]:
    quic, _ = classify_files([path], SERVERS, (443,), topo)
    tcp: list[Any] = []
    Analyzer(topo, Options(SERVERS, TCP_PORTS, engine="packet"), on_record=tcp.append).run([path])
    return quic, tcp


def test_the_stage_gives_the_offline_records(mixed: Path) -> None:
    topo = Topology()
    edge, parts = _edge(mixed, topo)
    s = edge.stats
    assert s.quic == 399 and s.sampled == 199 + s.tcp - s.dropped["server_to_client"]
    assert s.dropped["quic.server_to_client"] == 200 and s.dropped["quic.no_initial"] == 0
    stage = ConnectionStage(topo, clock=lambda: FAR, warmup_s=0)
    got: list[Any] = []
    for p, msgs in parts.items():
        for off, value in enumerate(msgs):
            recs, errs = stage.feed(p, value, (p, off))
            assert errs == []
            got += recs
    quic_ref, tcp_ref = _offline(mixed, topo)
    assert len(quic_ref) == 35 and len(tcp_ref) == 11
    quic_got = [r for r in got if r.get("transport") == "quic"]
    tcp_got = [r for r in got if r.get("transport") != "quic"]
    assert sorted(map(_key, quic_got)) == sorted(map(_key, quic_ref))
    assert sorted(map(_key, tcp_got)) == sorted(map(_key, tcp_ref))
    # everything decided at the end of input: every message acked, in order, nothing held
    for p, msgs in parts.items():
        assert stage.ackable(p) == [(p, i) for i in range(len(msgs))]
    assert stage.held() == 0 and stage.counters["quic_records"] == 35


def test_quic_partitions_by_tuple(mixed: Path) -> None:
    """Every datagram of a tuple is on one partition (the TCP key function): tuples never straddle."""
    _edge_, parts = _edge(mixed, Topology())
    where: dict[bytes, set[int]] = {}
    for p, msgs in parts.items():
        for value in msgs:
            m = decode_message(value)
            if isinstance(m, Batch):
                for _i, d, _g in m.quic:
                    k = d.recs[0].packed_key
                    where.setdefault(k, set()).add(p)
                    assert zlib.crc32(k) % PARTITIONS == p
    assert where and all(len(v) == 1 for v in where.values())


def _one(dg: QuicDatagram, seq: int) -> bytes:
    return encode_batch("e", [quic_fields(dg, dg.recs[0].src)], (1, seq), mixed=True)


def test_an_ended_attempts_opener_is_pinned_until_its_window_closes() -> None:
    """A client close ends an attempt at once (its record comes out), but the message that opened the
    tuple's first attempt of the window stays unacked until the window closes: a replay from there
    must see the tuple's state (what later datagrams of that attempt are)."""
    dgs = _bed_datagrams()
    topo = Topology()
    # the bed's client_abort_initial: an opening datagram, then its close
    closes = [i for i, d in enumerate(dgs) if any(r.close for r in d.recs)]
    assert closes
    i = closes[0]
    key = dgs[i].recs[0].packed_key
    same = [j for j in range(i + 1) if dgs[j].recs[0].packed_key == key]
    stage = ConnectionStage(topo, clock=lambda: FAR, warmup_s=0)
    recs: list[Any] = []
    for n, j in enumerate(same):
        out, errs = stage.feed(0, _one(dgs[j], n), n)
        assert errs == []
        recs += out
    assert [r["tags"] for r in recs] == [["client_close"]]
    assert stage.ackable(0) == []  # the opener is pinned (and holds everything behind it)
    ts = dgs[i].recs[0].ts
    end_of_window = (int(ts) // topo.window.size_s + 1) * topo.window.size_s
    stage.feed(0, encode_watermark(Watermark(end_of_window + 1, "e", False)), len(same))
    assert stage.ackable(0) == list(range(len(same) + 1))


def test_an_open_attempt_holds_its_messages() -> None:
    dgs = _bed_datagrams()
    topo = Topology()
    first = dgs[0]
    stage = ConnectionStage(topo, clock=lambda: FAR, warmup_s=0)
    out, errs = stage.feed(0, _one(first, 0), 0)
    assert out == [] and errs == []
    stage.feed(0, encode_watermark(Watermark(first.recs[0].ts + 1, "e", False)), 1)
    assert stage.ackable(0) == []  # its attempt is open
    out, _ = stage.feed(0, encode_watermark(Watermark(first.recs[0].ts + 30, "e", True)), 2)
    assert [r["transport"] for r in out] == ["quic"] and out[0]["tags"][0] == "timeout"
    assert stage.ackable(0) == [0, 1, 2]


def test_duplicate_mixed_batches_count_once() -> None:
    dgs = _bed_datagrams()
    stage = ConnectionStage(Topology(), clock=lambda: FAR, warmup_s=0)
    msg = _one(dgs[0], 0)
    stage.feed(0, msg, 0)
    stage.feed(0, msg, 1)
    assert stage.counters["quic_datagrams"] == 1 and stage.counters["duplicate_batches"] == 1


def test_quic_sampling_is_per_tuple_and_counted() -> None:
    """At probability 0.5 (hash mode) a tuple's datagrams are all kept or all dropped, and every
    datagram to the server is either sampled or counted by name."""
    from rstscope.capture.files import FileStats, read_frames

    gate = QuicGate(QUIC_SERVERS, [443], Sampler(0.5, "hash"))
    kept: dict[bytes, set[bool]] = {}
    n = 0
    for f in read_frames(QUIC_PCAP, FileStats(str(QUIC_PCAP))):
        dg = decode_udp(f.ts, f.linktype, f.data)
        assert not isinstance(dg, str)
        got = gate.admit(dg)
        if gate.side.is_server(dg.dst, dg.dport):
            n += 1
            kept.setdefault(dg.src + dg.sport.to_bytes(2, "big"), set()).add(got is not None)
    c = gate.counters
    assert all(len(v) == 1 for v in kept.values())
    assert 0 < c["unsampled"] < n and c["sampled"] + c["unsampled"] + c["no_initial"] == n
    assert c["server_to_client"] == 200


def test_a_datagram_too_far_ahead_is_refused_alone() -> None:
    """In a mixed batch a QUIC datagram ahead of the worker's clock is an error of its own: the TCP
    packets before and after it, and the datagrams in time, are taken."""
    from rstscope.packet import PacketRecord

    dgs = _bed_datagrams()[:2]
    ts = dgs[0].recs[0].ts
    ahead = QuicDatagram(tuple(r._replace(ts=ts + 1e6) for r in dgs[1].recs), dgs[1].hello)
    tcp = PacketRecord(ts, 4, b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1234, 80, 2, 7, 0, 1, 64, 1000, 0, 0)
    entries: list[Any] = [packet_fields(tcp), quic_fields(dgs[0], dgs[0].recs[0].src),
                          quic_fields(ahead, ahead.recs[0].src), packet_fields(tcp._replace(sport=1235))]
    stage = ConnectionStage(Topology(), clock=lambda: ts, warmup_s=0)
    _out, errors = stage.feed(0, encode_batch("e1", entries, mixed=True), 0)
    assert [e.reason for e in errors] == ["ahead_of_clock"] and "QUIC datagram" in str(errors[0])
    assert stage.counters["quic_datagrams"] == 1 and stage.counters["packets"] == 2
    assert stage.counters["dead:ahead_of_clock"] == 1
