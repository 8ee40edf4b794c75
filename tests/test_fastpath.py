"""The batch engine (rstscope.fastpath) against the per-packet reference: identical results, always.

Both paths run on every fixture and on generated adversarial captures (interleaved connections on a
few reused tuples, SYN retransmissions and new ISNs, idle gaps at the timeout +-1 us, window
boundaries, timestamps going backwards, truncated frames, VLAN, IPv6, IP options, UDP), with and
without configured servers, sampling and small windows. Compared: the summary (every counter), the
set of connection records (ids and every field), the rollup rows, FileStats and the end of input.
When the batch engine declines (time going backwards in a way whose outcome depends on the LRU
order), the analyzer falls back to the per-packet path; monotonic inputs must never fall back.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rstscope.config import Topology, WindowParams
from rstscope.fastpath.reader import read_columns
from rstscope.geo import GeoDB
from rstscope.offline import Analyzer, Options
from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, PacketRecord
from tests.builders import ether, ipv4_tcp, ipv6_tcp, pcap_bytes, pcapng_bytes

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
ALL_FIXTURES = sorted(p for p in FIXTURES.iterdir() if p.name != "MANIFEST.json")


def _run(paths: list[Path], options: Options, topology: Topology, engine: str,
         share_sampler_with: Analyzer | None = None, geo: GeoDB | None = None) -> tuple[Analyzer, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    an = Analyzer(topology, dataclasses.replace(options, engine=engine), geo, on_record=records.append)
    if share_sampler_with is not None:
        an.gate.sampler = share_sampler_with.gate.sampler  # the same secret key in random mode
    an.run(paths)
    return an, records


def compare(paths: list[Path], options: Options | None = None, topology: Topology | None = None,
            geo: GeoDB | None = None) -> str:
    """Run both engines; assert identical results; return the engine the batch run ended up using."""
    options = options or Options()
    topology = topology or Topology()
    ref, ref_recs = _run(paths, options, topology, "packet", geo=geo)
    bat, bat_recs = _run(paths, options, topology, "batch", share_sampler_with=ref, geo=geo)
    assert bat.summary.to_dict() == ref.summary.to_dict()

    def key(r: dict[str, Any]) -> str:
        return json.dumps(r, sort_keys=True)

    assert sorted(map(key, bat_recs)) == sorted(map(key, ref_recs))
    assert [json.dumps(r) for r in bat.rollup.rows()] == [json.dumps(r) for r in ref.rollup.rows()]
    assert [dataclasses.asdict(f) for f in bat.files] == [dataclasses.asdict(f) for f in ref.files]
    assert bat.end_ts == ref.end_ts
    return bat.engine_used


# -- fixtures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_fixture_unconfigured(path: Path) -> None:
    assert compare([path]) == "batch"


@pytest.mark.parametrize("entry", MANIFEST["fixtures"], ids=lambda e: e["file"])
def test_fixture_configured_servers(entry: dict[str, Any]) -> None:
    opts = Options(server_ips=[entry["server_ip"]] if entry.get("server_ip") else [],
                   server_ports=entry.get("server_ports") or [])
    assert compare([FIXTURES / entry["file"]], opts) == "batch"


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_fixture_sampled(path: Path) -> None:
    compare([path], Options(probability=0.5, sample_mode="hash", sample_key="k"))
    compare([path], Options(probability=0.3, sample_mode="random"))


def test_all_fixtures_as_one_run() -> None:
    compare(ALL_FIXTURES)


# -- generated captures --------------------------------------------------------------------------

WINDOW_END = (1_700_000_100 // 900 + 1) * 900
V4_CLIENTS = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 3]))
V4_SERVERS = (bytes([10, 0, 0, 2]), bytes([192, 0, 2, 7]))
V6_CLIENT = bytes.fromhex("20010db8000000000000000000000001")
V6_SERVER = bytes.fromhex("20010db8000000000000000000000002")
DELTAS = (0.0, 1e-6, 0.002, 0.4, 3.0, 9.999999, 10.0, 10.000001, 11.0, 30.0)
FLAG_CHOICES = (TH_SYN, TH_SYN, TH_ACK, TH_PSH | TH_ACK, TH_FIN | TH_ACK, TH_RST, TH_RST | TH_ACK,
                TH_SYN | TH_ACK, TH_ACK, TH_PSH | TH_ACK, TH_SYN | TH_FIN)
ENCAPS = ("eth",) * 6 + ("vlan", "qinq", "ipv6", "ipopts", "truncated", "udp", "arp", "tso")


@st.composite
def capture(draw: st.DrawFn) -> tuple[list[tuple[float, bytes]], bool]:
    """Frames (ts, bytes) of a small adversarial capture, and whether time never goes backwards."""
    n = draw(st.integers(1, 60))
    # Starts near a window's end (so connections straddle it, or end exactly at its cutoff margin).
    base = WINDOW_END - draw(st.sampled_from((0.5, 5.0, 10.0, 12.0, 20.0, 40.0, 300.0, 600.0)))
    t = base
    clients = draw(st.sampled_from((V4_CLIENTS[:1], V4_CLIENTS)))
    servers = draw(st.sampled_from((V4_SERVERS[:1], V4_SERVERS)))
    cports = draw(st.sampled_from(((40000,), (40000, 40001), (40000, 40001, 40002))))
    sports = draw(st.sampled_from(((80,), (80, 443))))
    frames: list[tuple[float, bytes]] = []
    monotonic = True
    for _ in range(n):
        delta = draw(st.sampled_from(DELTAS))
        if draw(st.integers(0, 14)) == 0:
            delta = -draw(st.sampled_from((1e-6, 0.3, 10.0, 12.0)))
            monotonic = False
        t = round(t + delta, 6)
        encap = draw(st.sampled_from(ENCAPS))
        v6 = encap == "ipv6"
        client = V6_CLIENT if v6 else draw(st.sampled_from(clients))
        server = V6_SERVER if v6 else draw(st.sampled_from(servers))
        cport = draw(st.sampled_from(cports))
        sport = draw(st.sampled_from(sports))
        flags = draw(st.sampled_from(FLAG_CHOICES))
        seq = draw(st.sampled_from((1000, 1001, 2000, 2001, 0, 0xFFFFFFF0, 1101)))
        ack = draw(st.sampled_from((0, 5001, 5002, 7000)))
        payload = draw(st.sampled_from((0, 0, 10)))
        reverse = draw(st.integers(0, 3)) == 0
        src, dst, sp, dp = (server, client, sport, cport) if reverse else (client, server, cport, sport)
        ipid = draw(st.sampled_from((100, 101, 54321, 7)))
        p = PacketRecord(t, 6 if v6 else 4, src, dst, sp, dp, flags, seq, ack, None if v6 else ipid,
                         draw(st.sampled_from((64, 63, 250))), draw(st.sampled_from((64240, 65535, 1024))),
                         payload, draw(st.sampled_from((0, 4, 20))))
        if encap == "ipv6":
            frame = ether(ipv6_tcp(p), 0x86DD)
        elif encap == "udp":
            frame = ether(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, src, dst) + b"\0" * 8)
        elif encap == "arp":
            frame = ether(b"\0" * 28, 0x0806)
        else:
            ip = ipv4_tcp(p)
            if encap == "ipopts":  # one 4-byte option: IHL 6
                ip = bytes([0x46]) + ip[1:2] + struct.pack(">H", len(ip) + 4) + ip[4:20] + b"\x01" * 4 + ip[20:]
            elif encap == "tso":  # total length 0 (TSO): the captured length counts
                ip = ip[:2] + b"\0\0" + ip[4:]
            vlans = {"vlan": ((0x8100, 5),), "qinq": ((0x88A8, 5), (0x8100, 6))}.get(encap, ())
            frame = ether(ip, vlans=vlans)
            if encap == "truncated":
                frame = frame[: draw(st.integers(0, len(frame) - 1))]
            elif encap == "tso" or draw(st.booleans()):  # Ethernet padding to the 60-byte minimum
                frame = frame + b"\0" * max(0, 60 - len(frame))
        frames.append((t, frame))
    if draw(st.booleans()):  # a later frame of another kind: the input ends after the idle timeout
        t = round(t + draw(st.sampled_from((5.0, 10.0, 10.000001, 30.0))), 6)
        frames.append((t, ether(b"\0" * 28, 0x0806)))
    return frames, monotonic


S, A, P, F, R = TH_SYN, TH_ACK, TH_PSH | TH_ACK, TH_FIN | TH_ACK, TH_RST
# Client scripts: (flags, seq offset from the ISN, ack number, payload); every stage and ending.
SCRIPTS: tuple[tuple[tuple[int, int, int, int], ...], ...] = (
    ((S, 0, 0, 0),),  # Post-SYN timeout
    ((S, 0, 0, 0), (S, 0, 0, 0)),  # SYN retransmitted: multi_syn
    ((S, 0, 0, 0), (A, 1, 501, 0)),  # Post-ACK timeout
    ((S, 0, 0, 0), (A, 1, 501, 0), (A, 1, 501, 0)),
    ((S, 0, 0, 0), (A, 1, 501, 0), (A, 1, 620, 0)),  # acknowledged server data: None
    ((S, 0, 0, 0), (A, 1, 501, 0), (P, 1, 501, 50)),  # Post-PSH timeout
    ((S, 0, 0, 0), (A, 1, 501, 0), (P, 1, 501, 50), (P, 1, 501, 50)),  # retransmitted data
    ((S, 0, 0, 0), (A, 1, 501, 0), (P, 1, 501, 50), (A, 51, 620, 0)),  # something after the data: None
    ((S, 0, 0, 0), (A, 1, 501, 0), (P, 1, 501, 50), (P, 51, 501, 50)),  # Later, timeout: None
    ((S, 0, 0, 0), (R, 0, 0, 0)),
    ((S, 0, 0, 0), (R | A, 0, 501, 0), (R, 0, 0, 0)),
    ((S, 0, 0, 0), (A, 1, 501, 0), (R, 1, 0, 0), (R, 1, 0, 0)),
    ((S, 0, 0, 0), (A, 1, 501, 0), (R, 1, 501, 0), (R, 1, 0, 0)),
    ((S, 0, 0, 0), (A, 1, 501, 0), (P, 1, 501, 50), (R | A, 51, 501, 0)),
    ((S, 0, 0, 0), (A, 1, 501, 0), (P, 1, 501, 50), (R, 51, 501, 0), (R, 51, 502, 0)),
    ((S, 0, 0, 0), (A, 1, 501, 0), (P, 1, 501, 50), (P, 51, 501, 50), (R, 101, 0, 0)),
    ((S, 0, 0, 0), (A, 1, 501, 0), (P, 1, 501, 50), (F, 51, 620, 0), (A, 52, 621, 0)),
    ((S, 0, 0, 0), *(((A, 1, 501, 0),) * 12)),  # ten packets and more: after the tenth, absorbed
    ((S, 0, 0, 0), (A, 1, 501, 0), (S, 0, 0, 0), (P, 1, 501, 50)),  # SYN retransmitted after the ACK
)


@st.composite
def scripted(draw: st.DrawFn) -> tuple[list[tuple[float, bytes]], bool]:
    """Frames of several scripted connections, interleaved, on a few (reused) tuples."""
    k = draw(st.integers(1, 8))
    t = WINDOW_END - draw(st.sampled_from((5.0, 10.0, 20.0, 35.0, 300.0, 300.0, 300.0)))
    conns = []
    for _ in range(k):
        script = SCRIPTS[draw(st.integers(0, len(SCRIPTS) - 1))]
        isn = draw(st.sampled_from((1000, 1000, 3000, 0xFFFFFFF0)))
        tup = (V4_CLIENTS[0], draw(st.sampled_from((40000, 40001))), V4_SERVERS[0], 80)
        conns.append([tup, isn, script, 0])
    frames: list[tuple[float, bytes]] = []
    monotonic = True
    live = list(range(k))
    while live:
        i = live[draw(st.integers(0, min(len(live), 2) - 1))]  # mostly in order, sometimes interleaved
        tup, isn, script, step = conns[i]
        flags, off, ack_no, payload = script[step]
        delta = draw(st.sampled_from((0.0, 1e-6, 0.01, 0.01, 0.01, 0.01, 0.5, 0.5, 2.5, 9.999999, 10.0, 10.000001,
                                      12.0)))
        if draw(st.integers(0, 19)) == 0:
            delta = -draw(st.sampled_from((1e-6, 0.5, 11.0)))
            monotonic = False
        t = round(t + delta, 6)
        p = PacketRecord(t, 4, tup[0], tup[2], tup[1], tup[3], flags, (isn + off) % (1 << 32), ack_no, 100 + step,
                         64 if not flags & TH_RST else draw(st.sampled_from((64, 63, 40))), 64240, payload, 0)
        frames.append((t, ether(ipv4_tcp(p))))
        if flags == S and draw(st.booleans()):  # the server's SYN-ACK
            sa = PacketRecord(t, 4, tup[2], tup[0], tup[3], tup[1], S | A, 500, (isn + 1) % (1 << 32), 0, 64,
                              65160, 0, 0)
            frames.append((t, ether(ipv4_tcp(sa))))
        elif draw(st.integers(0, 3)) == 0:  # some server ACK
            sa = PacketRecord(t, 4, tup[2], tup[0], tup[3], tup[1], A, 501, (isn + off + 1) % (1 << 32), 0, 64,
                              65160, 0, 0)
            frames.append((t, ether(ipv4_tcp(sa))))
        conns[i][3] += 1
        if conns[i][3] == len(script):
            live.remove(i)
    t = round(t + draw(st.sampled_from((1.0, 10.0, 10.000001, 30.0))), 6)
    frames.append((t, ether(b"\0" * 28, 0x0806)))
    return frames, monotonic


OPTIONS = (
    Options(),
    Options(server_ports=[80, 443]),
    Options(server_ips=["10.0.0.2", "2001:db8::2/128"]),
    Options(probability=0.5, sample_mode="hash", sample_key="k"),
)
TOPOLOGIES = (
    Topology(),
    Topology(window=WindowParams(size_s=60, timeout_s=10, grace_s=10, max_packets=10)),
    Topology(window=WindowParams(size_s=60, timeout_s=5, grace_s=2.5, max_packets=10, mode="idle", idle_s=3)),
    Topology(window=WindowParams(size_s=900, timeout_s=0.0, grace_s=2.5, max_packets=3)),
    Topology(window=WindowParams(size_s=900, timeout_s=10, grace_s=1.0, max_packets=4, mode="idle", idle_s=2.5)),
)


def _write(tmp: Path, frames: list[tuple[float, bytes]], fmt: str) -> list[Path]:
    if fmt == "pcapng":
        p = tmp / "c.pcapng"
        p.write_bytes(pcapng_bytes(frames))
        return [p]
    if fmt == "split":  # two files, one run
        half = len(frames) // 2
        a, b = tmp / "a.pcap", tmp / "b.pcap"
        a.write_bytes(pcap_bytes(frames[:half]))
        b.write_bytes(pcap_bytes(frames[half:]))
        return [a, b]
    p = tmp / "c.pcap"
    data = pcap_bytes(frames, nanos=fmt == "nanos")
    if fmt == "cut":  # a truncated last record
        data = data[: len(data) - 3]
    p.write_bytes(data)
    return [p]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(capture(), scripted()), st.sampled_from(range(len(OPTIONS))), st.sampled_from(range(len(TOPOLOGIES))),
       st.sampled_from(("pcap", "pcap", "nanos", "pcapng", "split", "cut")))
def test_generated_captures_identical(tmp_path_factory: pytest.TempPathFactory,
                                      cap: tuple[list[tuple[float, bytes]], bool], opt: int, topo: int,
                                      fmt: str) -> None:
    frames, monotonic = cap
    paths = _write(tmp_path_factory.mktemp("cap"), frames, fmt)
    _assert_columns_match(paths)
    used = compare(paths, OPTIONS[opt], TOPOLOGIES[topo])
    if monotonic:
        assert used == "batch"


def _script_frames(script: tuple[tuple[int, int, int, int], ...], start: float, step: float,
                   tail: float) -> list[tuple[float, bytes]]:
    frames = []
    t = start
    for i, (flags, off, ack_no, payload) in enumerate(script):
        p = PacketRecord(t, 4, V4_CLIENTS[0], V4_SERVERS[0], 40000, 80, flags, 1000 + off, ack_no, 100 + i,
                         64 if not flags & TH_RST else 40, 64240, payload, 0)
        frames.append((t, ether(ipv4_tcp(p))))
        t = round(t + step, 6)
    frames.append((round(t + tail, 6), ether(b"\0" * 28, 0x0806)))
    return frames


@pytest.mark.parametrize("script", range(len(SCRIPTS)))
def test_every_script_alone_and_twice(tmp_path: Path, script: int) -> None:
    """Each scripted connection, far from and at a window's end, idle or not at the end, and reused."""
    for start in (WINDOW_END - 300.0, WINDOW_END - 10.0, WINDOW_END - 20.0, WINDOW_END - 0.5):
        for step in (0.01, 10.0):
            for tail in (1.0, 10.0, 30.0):
                frames = _script_frames(SCRIPTS[script], start, step, tail)
                again = _script_frames(SCRIPTS[(script + 3) % len(SCRIPTS)], frames[-1][0] + 0.5, 0.01, tail)
                for i, fr in enumerate((frames, frames[:-1] + again)):
                    path = tmp_path / f"s{i}.pcap"
                    path.write_bytes(pcap_bytes(fr))
                    for topo in TOPOLOGIES:
                        assert compare([path], Options(), topo) == "batch"


def test_many_connections_reused_ports_seeded(tmp_path: Path) -> None:
    """A larger interleaving: 3000 connections on 40 client ports, all endings, one window boundary."""
    rnd = random.Random(7)
    frames: list[tuple[float, bytes]] = []
    t = WINDOW_END - 200.0
    open_conns: list[list[Any]] = []
    client, server = V4_CLIENTS[0], V4_SERVERS[0]
    for _ in range(3000):
        port = 30000 + rnd.randrange(40)
        isn = rnd.randrange(1 << 32)
        kind = rnd.choice(("ok", "ok", "rst", "idle", "synrtx", "full"))
        flags = {"ok": [TH_SYN, TH_ACK, TH_PSH | TH_ACK, TH_ACK, TH_FIN | TH_ACK],
                 "rst": [TH_SYN, TH_ACK, TH_PSH | TH_ACK, TH_RST],
                 "idle": [TH_SYN, TH_ACK],
                 "synrtx": [TH_SYN, TH_SYN, TH_ACK],
                 "full": [TH_SYN] + [TH_ACK] * 12}[kind]
        open_conns.append([port, isn, flags, 0])
        while open_conns and (len(open_conns) > 30 or rnd.random() < 0.5):
            c = open_conns[rnd.randrange(len(open_conns))]
            port, isn, flags, i = c
            f = flags[i]
            seq = isn if f == TH_SYN else (isn + 1) % (1 << 32)
            p = PacketRecord(t, 4, client, server, port, 80, f, seq, 0 if f == TH_SYN else 77, 100 + i, 64, 64240,
                             10 if f & TH_PSH else 0, 20 if f == TH_SYN else 12)
            frames.append((t, ether(ipv4_tcp(p))))
            if f == TH_SYN:  # the server answers
                s = PacketRecord(t, 4, server, client, 80, port, TH_SYN | TH_ACK, 76, seq + 1, 0, 64, 65160, 0, 20)
                frames.append((t, ether(ipv4_tcp(s))))
            c[3] += 1
            if c[3] == len(flags):
                open_conns.remove(c)
            t = round(t + rnd.choice((0.0, 1e-6, 0.01, 0.05, 0.2)), 6)
        if rnd.random() < 0.01:
            t = round(t + rnd.choice((9.999999, 10.0, 10.000001)), 6)
    path = tmp_path / "many.pcap"
    path.write_bytes(pcap_bytes(frames))
    for opts in OPTIONS:
        for topo in TOPOLOGIES:
            assert compare([path], opts, topo) == "batch"


def test_time_going_backwards_a_little_stays_on_the_batch_path(tmp_path: Path) -> None:
    """Real captures reorder by microseconds across tuples; that alone must not force the slow path."""
    frames = []
    t = WINDOW_END - 100.0
    for i in range(200):
        port = 20000 + i
        for k, f in enumerate((TH_SYN, TH_ACK, TH_FIN | TH_ACK)):
            p = PacketRecord(t + k * 1e-3 - (2e-6 if i % 7 == 0 and k == 0 else 0.0), 4, V4_CLIENTS[0],
                             V4_SERVERS[0], port, 80, f, 1000 if f == TH_SYN else 1001, 0, 1, 64, 64240, 0, 0)
            frames.append((p.ts, ether(ipv4_tcp(p))))
        t += 0.01
    path = tmp_path / "jitter.pcap"
    path.write_bytes(pcap_bytes(frames))
    assert compare([path]) == "batch"


def test_geolocated_rollups(tmp_path: Path) -> None:
    """Per-country/ASN rollups and record geo fields agree (summary and rollups are grouped by client)."""
    from tests.test_geo import maxmind_asn, maxmind_country

    d = tmp_path / "geo"
    d.mkdir()
    maxmind_country(d / "GeoLite2-Country.mmdb")
    maxmind_asn(d / "GeoLite2-ASN.mmdb")
    clients = [bytes([198, 51, 100, 7]), bytes([198, 51, 100, 8]), bytes([203, 0, 113, 9]), bytes([10, 0, 0, 1])]
    frames = []
    t = WINDOW_END - 400.0
    for i in range(120):
        script = SCRIPTS[i % len(SCRIPTS)]
        client = clients[i % len(clients)]
        for k, (flags, off, ack_no, payload) in enumerate(script):
            p = PacketRecord(t + k * 0.01, 4, client, V4_SERVERS[0], 30000 + i, 443, flags, 1000 + off, ack_no,
                             100 + k, 64 if not flags & TH_RST else 40, 64240, payload, 0)
            frames.append((p.ts, ether(ipv4_tcp(p))))
        t += 0.5
    frames.append((t + 30.0, ether(b"\0" * 28, 0x0806)))
    path = tmp_path / "geo.pcap"
    path.write_bytes(pcap_bytes(frames))
    with GeoDB.open(d) as geo:
        assert compare([path], geo=geo) == "batch"


def test_empty_and_broken_inputs(tmp_path: Path) -> None:
    from rstscope.capture.files import CaptureError

    empty = tmp_path / "empty.pcap"
    empty.write_bytes(pcap_bytes([]))
    only_arp = tmp_path / "arp.pcap"
    only_arp.write_bytes(pcap_bytes([(WINDOW_END - 5.0, ether(b"\0" * 28, 0x0806))]))
    short = tmp_path / "short.pcap"
    short.write_bytes(pcap_bytes([(WINDOW_END - 5.0, b"\x01")]) + b"\x00" * 7)  # and a cut record header
    for paths in ([empty], [only_arp], [short], [empty, only_arp, short]):
        assert compare(paths) == "batch"
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    for engine in ("packet", "batch"):
        with pytest.raises(CaptureError, match="unknown magic"):
            _run([bad], Options(), Topology(), engine)


def test_inputs_above_the_batch_limit_use_the_packet_path(monkeypatch: pytest.MonkeyPatch) -> None:
    path = FIXTURES / "http_ok.pcap"
    monkeypatch.setenv("RSTSCOPE_BATCH_MAX_BYTES", str(path.stat().st_size - 1))
    assert compare([path]) == "packet"
    monkeypatch.setenv("RSTSCOPE_BATCH_MAX_BYTES", str(path.stat().st_size))
    assert compare([path]) == "batch"


def _assert_columns_match(paths: list[Path]) -> None:
    """The vectorized reader gives every TCP packet exactly as decode_frame does, and the same counts."""
    from collections import Counter

    from rstscope.capture.files import FileStats, read_frames
    from rstscope.decode import NON_TCP_REASONS, decode_frame

    ref: list[PacketRecord] = []
    reasons: Counter[str] = Counter()
    non_tcp = 0
    for path in paths:
        st = FileStats(str(path))
        for f in read_frames(path, st):
            r = decode_frame(*f)
            if isinstance(r, str):
                if r in NON_TCP_REASONS:
                    non_tcp += 1
                else:
                    reasons[r] += 1
            else:
                ref.append(r)
        reasons.update(st.errors)
    cols = read_columns(paths)
    assert [cols.record(i) for i in range(len(cols))] == ref
    assert (cols.non_tcp, cols.malformed) == (non_tcp, reasons)


def test_columns_match_the_reference_decoder() -> None:
    for path in ALL_FIXTURES:
        _assert_columns_match([path])
