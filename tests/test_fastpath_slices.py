"""The batch engine in time slices: slicing changes nothing, and memory does not grow with the input.

``rstscope analyze`` reads its input in slices of ``engine.SLICE_FRAMES`` frames and carries over only
what a slice cannot decide (tests/test_fastpath.py runs with the default, i.e. one slice for its
inputs). Here every comparison runs the batch engine with tiny slices (1, 2, 7, 64 frames: connections
span many slice boundaries, and window boundaries too) against one slice and the per-packet path:
identical summary, records, rollups, FileStats and end of input. Also: hash collisions between tuples
are found and re-seeded, a fallback after some slices delivers every record exactly once, an absurd
record length stops a file where the reference stops, and what is carried is bounded.
"""

from __future__ import annotations

import dataclasses
import json
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rstscope.config import Topology
from rstscope.fastpath import engine
from rstscope.offline import Analyzer, Options
from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, PacketRecord
from tests.builders import ether, ipv4_tcp, pcap_bytes
from tests.test_fastpath import (
    ALL_FIXTURES,
    OPTIONS,
    TOPOLOGIES,
    V4_CLIENTS,
    V4_SERVERS,
    WINDOW_END,
    _write,
    capture,
    compare,
    scripted,
)

DEMO = Path(__file__).parents[1] / "examples" / "demo.pcap"


def _outputs(an: Analyzer, records: list[dict[str, Any]]) -> tuple[Any, ...]:
    return (json.dumps(an.summary.to_dict(), sort_keys=True), sorted(json.dumps(r, sort_keys=True) for r in records),
            [json.dumps(r) for r in an.rollup.rows()], [dataclasses.asdict(f) for f in an.files], an.end_ts)


def _batch(paths: list[Path], slice_frames: int, options: Options | None = None,
           topology: Topology | None = None) -> tuple[Analyzer, list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    an = Analyzer(topology or Topology(), options or Options(), on_record=records.append)
    left = engine.run(an, paths, slice_frames=slice_frames)
    assert left is None  # the batch engine decided, in slices
    an.engine_used = "batch"
    return an, records


def compare_sliced(paths: list[Path], options: Options | None = None, topology: Topology | None = None,
                   sizes: tuple[int, ...] = (1, 2, 7, 64), monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    """Tiny slices == one slice == the per-packet path (also through Analyzer.run)."""
    whole = _outputs(*_batch(paths, 1 << 40, options, topology))
    for size in sizes:
        assert _outputs(*_batch(paths, size, options, topology)) == whole, f"slices of {size} frames"
    if monkeypatch is not None:
        for size in sizes:
            monkeypatch.setenv("RSTSCOPE_SLICE_FRAMES", str(size))
            assert compare(paths, options, topology) == "batch"


# -- fixtures and the demo capture ------------------------------------------------------------------

@pytest.mark.parametrize("path", [*ALL_FIXTURES, DEMO], ids=lambda p: p.name)
def test_fixture_in_tiny_slices(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compare_sliced([path], monkeypatch=monkeypatch)
    compare_sliced([path], Options(probability=0.5, sample_mode="hash", sample_key="k"), sizes=(3,))
    for topo in TOPOLOGIES[1:]:
        compare_sliced([path], topology=topo, sizes=(5,))


def test_all_fixtures_as_one_run_in_tiny_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Their times go back from file to file (late packets): the per-packet path takes over after the
    slices the batch engine delivered, and every record comes out once."""
    for size in (1, 7, 64, 1000):
        monkeypatch.setenv("RSTSCOPE_SLICE_FRAMES", str(size))
        compare([*ALL_FIXTURES, DEMO])


# -- generated captures -----------------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(capture(), scripted()), st.sampled_from(range(len(OPTIONS))), st.sampled_from(range(len(TOPOLOGIES))),
       st.sampled_from(("pcap", "pcapng", "split", "cut")), st.sampled_from((1, 2, 3, 7)))
def test_generated_captures_in_tiny_slices(tmp_path_factory: pytest.TempPathFactory,
                                           cap: tuple[list[tuple[float, bytes]], bool], opt: int, topo: int, fmt: str,
                                           size: int) -> None:
    """Against the per-packet path, with time going backwards too (a fallback after some slices)."""
    frames, monotonic = cap
    paths = _write(tmp_path_factory.mktemp("cap"), frames, fmt)
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("RSTSCOPE_SLICE_FRAMES", str(size))
        used = compare(paths, OPTIONS[opt], TOPOLOGIES[topo])
    finally:
        mp.undo()
    if monotonic:
        assert used == "batch"


def _reused_ports(seed: int, n: int, start: float) -> list[tuple[float, bytes]]:
    """Interleaved connections on few reused ports (every ending), crossing a window boundary."""
    rnd = random.Random(seed)
    frames: list[tuple[float, bytes]] = []
    t = start
    live: list[list[Any]] = []
    client, server = V4_CLIENTS[0], V4_SERVERS[0]
    for _ in range(n):
        port = 30000 + rnd.randrange(12)
        kind = rnd.choice(("ok", "rst", "idle", "synrtx", "full", "late_rst"))
        flags = {"ok": [TH_SYN, TH_ACK, TH_PSH | TH_ACK, TH_FIN | TH_ACK, TH_ACK],
                 "rst": [TH_SYN, TH_ACK, TH_PSH | TH_ACK, TH_RST],
                 "idle": [TH_SYN, TH_ACK],
                 "synrtx": [TH_SYN, TH_SYN, TH_ACK],
                 "full": [TH_SYN] + [TH_ACK] * 12,
                 "late_rst": [TH_SYN, TH_ACK, TH_FIN | TH_ACK, TH_RST, TH_RST | TH_ACK]}[kind]
        live.append([port, rnd.randrange(1 << 32), flags, 0])
        while live and (len(live) > 6 or rnd.random() < 0.5):
            c = live[rnd.randrange(len(live))]
            port, isn, fl, i = c
            f = fl[i]
            seq = isn if f == TH_SYN else (isn + 1) % (1 << 32)
            p = PacketRecord(t, 4, client, server, port, 80, f, seq, 0 if f == TH_SYN else 77, 100 + i,
                             64 if not f & TH_RST else 41, 64240, 10 if f & TH_PSH else 0, 20 if f == TH_SYN else 12)
            frames.append((t, ether(ipv4_tcp(p))))
            if f == TH_SYN:  # the server answers, and talks
                s = PacketRecord(t, 4, server, client, 80, port, TH_SYN | TH_ACK, 76, seq + 1, 0, 64, 65160, 0, 20)
                frames.append((t, ether(ipv4_tcp(s))))
            elif rnd.random() < 0.5:
                s = PacketRecord(t, 4, server, client, 80, port, TH_ACK, 77, seq + 1, 0, 64, 65160, 0, 12)
                frames.append((t, ether(ipv4_tcp(s))))
            c[3] += 1
            if c[3] == len(fl):
                live.remove(c)
            t = round(t + rnd.choice((0.0, 1e-6, 0.01, 0.3, 2.0)), 6)
        if rnd.random() < 0.05:
            t = round(t + rnd.choice((2.5, 9.999999, 10.0, 10.000001, 30.0)), 6)
    return frames


def test_connections_spanning_slices_and_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "reused.pcap"
    path.write_bytes(pcap_bytes(_reused_ports(3, 800, WINDOW_END - 120.0)))
    for i, opts in enumerate(OPTIONS):
        for j, topo in enumerate(TOPOLOGIES):
            # slices of one frame cost a slice's fixed work per frame: once, the other sizes everywhere
            compare_sliced([path], opts, topo, sizes=(1, 7, 50) if i == j == 0 else (7, 50))
    compare_sliced([path], sizes=(7, 50), monkeypatch=monkeypatch)


# -- what only the slices have: fallback after some slices, hash collisions, stop conditions, memory ---

def test_a_fallback_after_some_slices_delivers_every_record_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Time going back far (a connection's next packet after the table emitted it) late in the input:
    the batch engine has delivered the records of its first slices; the per-packet path takes over and
    delivers the others, none twice."""
    frames = _reused_ports(5, 400, WINDOW_END - 600.0)
    t = frames[-1][0] + 1.0
    p = PacketRecord(t, 4, V4_CLIENTS[1], V4_SERVERS[0], 41000, 80, TH_SYN, 1, 0, 1, 64, 64240, 0, 0)
    frames.append((t, ether(ipv4_tcp(p))))
    p = PacketRecord(t + 0.1, 4, V4_CLIENTS[1], V4_SERVERS[0], 41000, 80, TH_FIN | TH_ACK, 2, 7, 2, 64, 64240, 0, 0)
    frames.append((t + 0.1, ether(ipv4_tcp(p))))
    p = PacketRecord(t + 20.0, 4, V4_CLIENTS[1], V4_SERVERS[0], 41001, 80, TH_SYN, 1, 0, 1, 64, 64240, 0, 0)
    frames.append((t + 20.0, ether(ipv4_tcp(p))))  # the watermark passes the first one's grace
    p = PacketRecord(t + 5.0, 4, V4_CLIENTS[1], V4_SERVERS[0], 41000, 80, TH_RST, 2, 0, 3, 64, 0, 0, 0)
    frames.append((t + 5.0, ether(ipv4_tcp(p))))  # ... then its RST, 5 s after its FIN: after_close
    path = tmp_path / "back.pcap"
    path.write_bytes(pcap_bytes(frames))
    an = Analyzer(Topology(), Options(), on_record=lambda r: None)
    delivered = engine.run(an, [path], slice_frames=50)
    assert delivered is not None and delivered > 0  # some slices went out before the batch engine stopped
    for size in (1, 50, 300):
        monkeypatch.setenv("RSTSCOPE_SLICE_FRAMES", str(size))
        assert compare([path]) == "packet"


def test_tuple_hash_collisions_are_found_and_reseeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine._tuple_hash

    def weak(src: Any, dst: Any, seed: int) -> Any:
        if seed < 2:  # every tuple collides with many others
            return ((np.asarray(src) ^ np.asarray(dst)) & 3).astype(np.uint64) << np.uint64(60)
        return real(src, dst, seed)

    monkeypatch.setattr(engine, "_tuple_hash", weak)
    path = tmp_path / "reused.pcap"
    path.write_bytes(pcap_bytes(_reused_ports(11, 300, WINDOW_END - 120.0)))
    runs = []
    for size in (7, 1 << 40):
        an, recs = _batch([path], size)
        runs.append(_outputs(an, recs))
    assert runs[0] == runs[1]
    monkeypatch.setattr(engine, "_tuple_hash", real)
    assert _outputs(*_batch([path], 7)) == runs[0]
    for size in ("3", "7"):
        monkeypatch.setattr(engine, "_tuple_hash", weak)
        monkeypatch.setenv("RSTSCOPE_SLICE_FRAMES", size)
        assert compare([path]) == "batch"


def test_an_absurd_record_length_stops_the_file_where_the_reference_stops(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    frames = _reused_ports(13, 60, WINDOW_END - 50.0)
    data = bytearray(pcap_bytes(frames))
    pos = 24
    for _ in range(len(frames) // 2):  # the record header of the middle frame gets a garbage length
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    struct.pack_into("<I", data, pos + 8, 1 << 30)
    path = tmp_path / "absurd.pcap"
    path.write_bytes(bytes(data))
    for size in ("1", "7", "1000"):
        monkeypatch.setenv("RSTSCOPE_SLICE_FRAMES", size)
        assert compare([path]) == "batch"
    an, _ = _batch([path], 7)
    assert an.files[0].errors == {"absurd_record_length": 1} and an.files[0].stopped_at == pos


def test_what_is_carried_does_not_grow_with_the_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same traffic repeated in later windows: the carried states and packets stay bounded by one
    window's traffic, whatever the number of copies."""
    base = _reused_ports(17, 300, WINDOW_END - 400.0)
    base += [(base[-1][0], ether(b"\0" * 28, 0x0806))] * (-len(base) % 64)  # slices of 64 frames align with copies
    peaks = []
    for copies in (2, 6):
        shift = 900.0 * (1 + int((base[-1][0] - base[0][0]) // 900))
        frames = [(round(t + shift * k, 6), f) for k in range(copies) for t, f in base]
        path = tmp_path / f"x{copies}.pcap"
        path.write_bytes(pcap_bytes(frames))
        seen = [0, 0]
        decide = engine.BatchRun._decide

        def spy(self: engine.BatchRun, *args: Any, seen: list[int] = seen, decide: Any = decide, **kw: Any) -> None:
            decide(self, *args, **kw)
            seen[0] = max(seen[0], len(self.states))
            seen[1] = max(seen[1], int(self.states.count[self.states.open].sum()))

        monkeypatch.setattr(engine.BatchRun, "_decide", spy)
        an, _ = _batch([path], 64)
        monkeypatch.setattr(engine.BatchRun, "_decide", decide)
        assert an.summary.connections > 0
        peaks.append(tuple(seen))
    assert peaks[1] == peaks[0]
