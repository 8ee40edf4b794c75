"""A capture file through the edge's columns sends exactly what the frame-by-frame reference sends.

``Edge.run`` takes capture files through ``edge.columns`` (decoded in slices, direction over columns,
the gate's rule packet by packet, then the records, QUIC datagrams, window cuts and watermark checks
replayed in frame order); a ``Source`` goes frame by frame. Both runs here share a run id and a
sampler, so the messages (partition, key, value, timestamp, in order) and every counter must be equal:
over the batch engine's adversarial captures (time going backwards, IPv6, VLANs, IP options, UDP,
ARP, truncated frames, pcapng, split and cut files), under every direction, sampling and window
setting, with tiny batches, slices and watermark intervals so that cuts, batch ends and slice ends
fall everywhere; and on the fixtures (QUIC included), with client addresses hidden and geolocation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rstscope.capture.files import FileStats, read_frames
from rstscope.codecs.packet import KIND_BATCH, KIND_MIXED
from rstscope.config import Topology
from rstscope.direction import Direction
from rstscope.edge import columns, sources
from rstscope.edge.privacy import Truncate
from rstscope.edge.producer import Batches, Edge
from rstscope.edge.sources import PcapFiles
from rstscope.geo import GeoDB
from rstscope.sampling import Gate, QuicGate, Sampler
from tests.quic_mix import mixed_capture
from tests.test_fastpath import ALL_FIXTURES, TOPOLOGIES, _write, capture, scripted

PARTITIONS = 5
# (server addresses, server ports, sampling probability, sampling mode)
SETTINGS = (
    ([], [], 1.0, "random"),
    ([], [80, 443], 1.0, "random"),
    (["10.0.0.2", "2001:db8::2/128"], [], 1.0, "random"),
    ([], [], 0.5, "random"),
    (["10.0.0.0/8"], [443], 0.5, "hash"),
)


class Keep:
    """What ``Edge`` needs of a producer; keeps every message as (partition, key, value, timestamp)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes | None, bytes, int]] = []
        self.polls = 0

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.messages.append((kw["partition"], key, value, kw["timestamp"]))

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        return 0

    def __len__(self) -> int:
        return 0


def _edge(setting: int, topo: Topology, sampler: Sampler, quic: bool, batch: int, interval: float,
          linger_s: float, **kw: Any) -> Edge:
    ips, ports, _p, _m = SETTINGS[setting]
    gate = Gate(Direction(ips, ports), sampler, topo.window)
    qg = QuicGate(ips, [443], sampler, topo.window, "keep") if quic else None
    edge = Edge(Keep(), "packets", PARTITIONS, gate, "edge-a", interval,
                batches=Batches(PARTITIONS, batch, linger_s=linger_s), quic=qg, **kw)
    edge.run_id = 7
    return edge


class Batched:
    """A live-like source: a file's frames in batches of the given sizes, in turn (as libpcap hands them over)."""

    live = True
    name = "batched"

    def __init__(self, paths: list[Path], sizes: list[int]) -> None:
        self.frames = [f for path in paths for f in read_frames(path, FileStats(str(path)))]
        self.sizes = sizes
        self.stopped = False

    def batches(self) -> Iterator[list[tuple[float, int, bytes]]]:
        i = k = 0
        while i < len(self.frames):
            n = self.sizes[k % len(self.sizes)]
            yield self.frames[i:i + n]
            i, k = i + n, k + 1

    def kernel_drops(self) -> int:
        return 0


def _same(paths: list[Path], setting: int = 0, topo: Topology | None = None, quic: bool = True, batch: int = 3,
          interval: float = 0.5, live: list[int] | None = None, **kw: Any) -> Edge:
    """Run frame by frame (the reference) and through the columns: in slices (the paths) and a batch at a
    time (a source: the file's, or a live-like one with ``live`` batch sizes, whose waiting batches are
    all stale after each read: linger 0); assert the same messages and counters. Returns the last run."""
    topo = topo or Topology()
    _ips, _ports, p, mode = SETTINGS[setting]
    sampler = Sampler(p, mode, "k")  # one sampler: its random key is the same for all
    linger = 0.0 if live else 1e9

    def source() -> PcapFiles | Batched:
        return Batched(paths, live) if live else PcapFiles(paths)

    ref = _edge(setting, topo, sampler, quic, batch, interval, linger, **kw)
    ref.columns = False
    ref.run(source())
    col = ref
    for src in [source()] if live else [list(paths), source()]:
        col = _edge(setting, topo, sampler, quic, batch, interval, linger, **kw)
        col.run(src)
        assert isinstance(ref.producer, Keep) and isinstance(col.producer, Keep)
        assert col.producer.messages == ref.producer.messages
        assert col.producer.polls == ref.producer.polls  # delivery reports as often
        assert col.stats.to_dict() == ref.stats.to_dict()
        assert dict(col.gate.counters) == dict(ref.gate.counters)
    return col


@pytest.fixture
def tiny_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 4 frames and slices of 8: batch ends and slice ends fall inside small captures."""
    monkeypatch.setattr(sources, "BATCH", 4)
    monkeypatch.setattr(columns, "BATCH", 4)
    monkeypatch.setattr(columns, "SLICE_FRAMES", 8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(capture(), scripted()), st.sampled_from(range(len(SETTINGS))),
       st.sampled_from(range(len(TOPOLOGIES))), st.sampled_from(("pcap", "pcap", "nanos", "pcapng", "split", "cut")),
       st.sampled_from((1, 3, 500)), st.sampled_from((0.0, 0.5, 1.0, 60.0)))
def test_generated_captures_send_the_same(tmp_path_factory: pytest.TempPathFactory, tiny_batches: None,
                                          cap: tuple[list[tuple[float, bytes]], bool], setting: int, topo: int,
                                          fmt: str, batch: int, interval: float) -> None:
    frames, _monotonic = cap
    paths = _write(tmp_path_factory.mktemp("cap"), frames, fmt)
    _same(paths, setting, TOPOLOGIES[topo], batch=batch, interval=interval)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(capture(), scripted()), st.sampled_from(range(len(SETTINGS))),
       st.sampled_from(range(len(TOPOLOGIES))), st.lists(st.integers(1, 9), min_size=1, max_size=4),
       st.sampled_from((1, 3, 500)), st.sampled_from((0.0, 0.5, 60.0)))
def test_live_batches_send_the_same(tmp_path_factory: pytest.TempPathFactory,
                                    cap: tuple[list[tuple[float, bytes]], bool], setting: int, topo: int,
                                    sizes: list[int], batch: int, interval: float) -> None:
    """A live source's batches (any sizes; stale batches out after each) through the columns, one at a time."""
    frames, _monotonic = cap
    paths = _write(tmp_path_factory.mktemp("cap"), frames, "pcap")
    _same(paths, setting, TOPOLOGIES[topo], batch=batch, interval=interval, live=sizes)


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_fixtures_send_the_same(path: Path) -> None:
    col = _same([path], setting=0)
    assert col.stats.sent > 0 or col.stats.tcp == 0 or path.name.startswith("quic")


def test_quic_mix_hidden_clients_and_geolocation(tmp_path: Path, tiny_batches: None) -> None:
    from tests.test_geo import maxmind_asn, maxmind_country

    d = tmp_path / "geo"
    d.mkdir()
    maxmind_country(d / "GeoLite2-Country.mmdb")
    maxmind_asn(d / "GeoLite2-ASN.mmdb")
    mixed = mixed_capture(tmp_path / "mixed.pcap")
    with GeoDB.open(d) as geo:
        col = _same([mixed, *ALL_FIXTURES[:6]], setting=1, client_ip=Truncate(16, 32), geo=geo, batch=7)
    assert isinstance(col.producer, Keep)
    kinds = {msgpack.unpackb(v)[1] for _p, _k, v, _t in col.producer.messages}
    assert {KIND_BATCH, KIND_MIXED} <= kinds  # TCP alone, and with QUIC datagrams


def test_many_slices_of_the_default_size(tmp_path: Path) -> None:
    """The bench's capture (4 records a connection), long enough for several default slices and windows."""
    from bench.bench_pipeline import synth_pcap

    pcap = tmp_path / "synth.pcap"
    synth_pcap(pcap, 12_000)
    col = _same([pcap], setting=1, batch=500, interval=1.0)
    assert col.stats.read > 2 * columns.SLICE_FRAMES and col.stats.sent == 48_000


def test_a_live_edge_forgets_the_ipv6_addresses_of_each_batch() -> None:
    """A live edge runs for months: its reader keeps no IPv6 address past the batch that held it."""
    from rstscope.packet import TH_SYN, PacketRecord
    from tests.builders import ether, ipv6_tcp

    edge = _edge(0, Topology(), Sampler(1.0), True, 500, 1.0, 1e9)
    reader = columns.decoder(edge)
    for b in range(3):
        frames = []
        for i in range(20):
            client = bytes.fromhex("20010db8") + (b * 100 + i).to_bytes(12, "big")
            p = PacketRecord(1e9 + b + i / 100, 6, client, bytes.fromhex("20010db8" + "00" * 11 + "02"), 40000, 443,
                             TH_SYN, 1000, 0, None, 64, 64240, 0, 0)
            frames.append((p.ts, 1, ether(ipv6_tcp(p), 0x86DD)))
        columns.take_batch(edge, reader, frames)
        assert not reader.addresses.v6
    assert edge.stats.tcp == 60 and edge.stats.sampled == 60
