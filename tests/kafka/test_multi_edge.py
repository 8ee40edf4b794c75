"""Many edges on one packets topic (issue 14), on a real broker, with real captures.

Three captures of the same period, made concurrently in network namespaces with different client
addresses (their 4-tuples never collide), are sent by three `rstscope edge` processes, each with its own
``--edge-id``. The workers must decide exactly what `rstscope analyze` decides for the three captures
together; an edge SIGKILLed without its end of input must stop holding windows after ``edges.idle_s``;
an edge whose clock runs 2 minutes fast must not make the other edges' packets late; an edge restarted
under the same id goes on where it stopped. Nothing is mocked.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rstscope import config
from rstscope.capture.files import read_frames
from rstscope.codecs.jsonl import loads
from rstscope.codecs.packet import Batch, Watermark, decode_message
from rstscope.core.record import ConnectionRecord, make_record
from rstscope.core.rollup import Rollup, row_key_of, row_key_text
from rstscope.core.table import ConnectionTable
from rstscope.decode import decode_frame
from rstscope.direction import Direction
from rstscope.geo import GeoDB
from rstscope.offline import Analyzer, Options
from rstscope.packet import TH_FIN, TH_RST, PacketRecord
from rstscope.sampling import Gate, Sampler
from tests.builders import pcap_bytes, wait_off_window_cutoff
from tests.kafka import test_pipeline
from tests.kafka.test_pipeline import (
    CLIENT,
    EXPECTED_STAGES,
    READY,
    TAIL,
    committed,
    end_offsets,
    env,
    read_topic,
    wait_rows,
)
from tests.netns import SERVER_IP, capture_client_run

pytestmark = pytest.mark.kafka

# the pipeline fixture (topics unique to the test, edges.idle_s 3, workers stopped at the end)
pipeline = test_pipeline.pipeline
work = test_pipeline.work

EDGES = ("edge-A", "edge-B", "edge-C")
CLIENT_IPS = ("10.97.0.11", "10.97.0.12", "10.97.0.13")  # one per capture: no 4-tuple is in two captures
STAGGER_S = 4.0  # the captures start this far apart
CAPTURE_S = 4 + TAIL + 5  # the client's traffic, at most (as test_pipeline.make_capture)
FAST_S = 120.0  # edge C's clock runs this far ahead
B_RATE = 36  # frames/s: B's replay takes ~10 s, in bursts of 64 frames 1.8 s apart (under edges.idle_s)
PORTS = [80, 81]

Rows = dict[str, dict[str, Any]]
Frame = tuple[float, int, bytes]


# -- captures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captures() -> Iterator[tuple[Path, Path, Path]]:
    """Three real captures of one period (client script of test_pipeline), started 0, 4 and 8 s apart,
    made at the same time so that their traffic interleaves as on three capture hosts."""
    cached = os.environ.get("RSTSCOPE_TEST_MULTI_CAPTURES")  # a directory with a.pcap, b.pcap, c.pcap
    if cached:
        paths = tuple(Path(cached) / f"{n}.pcap" for n in "abc")
        if all(p.is_file() for p in paths):
            yield paths  # type: ignore[misc]
            return
    if os.geteuid() != 0 or not shutil.which("tcpdump") or not shutil.which("ip"):
        pytest.skip("making the captures needs root, ip netns and tcpdump")
    d = test_pipeline._workdir()
    paths = (d / "a.pcap", d / "b.pcap", d / "c.pcap")
    # all three off a window cutoff at once (each run checks its own span again, and passes at once)
    wait_off_window_cutoff(2 * STAGGER_S + CAPTURE_S + 5)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            time.sleep(i * STAGGER_S)
            capture_client_run(paths[i], f"rme{i + 1}", CLIENT, timeout=90, duration_s=CAPTURE_S,
                               client_ip=CLIENT_IPS[i])
        except BaseException as e:  # reported by the fixture, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    yield paths
    shutil.rmtree(d, ignore_errors=True)


def frames_of(path: Path) -> list[Frame]:
    return [(f[0], f[1], f[2]) for f in read_frames(path)]


def write_pcap(path: Path, frames: list[Frame]) -> Path:
    linktypes = {lt for _ts, lt, _data in frames}
    assert len(linktypes) == 1, linktypes
    path.write_bytes(pcap_bytes([(ts, data) for ts, _lt, data in frames], linktypes.pop()))
    return path


def client_packets(frames: list[Frame]) -> list[PacketRecord]:
    server = socket.inet_aton(SERVER_IP)
    out = []
    for ts, lt, data in frames:
        p = decode_frame(ts, lt, data)
        if isinstance(p, PacketRecord) and p.dst == server and p.dport in PORTS:
            out.append(p)
    return out


def gate_count(frames: list[Frame], topo: config.Topology) -> int:
    """The packets an edge sends for these frames (--sample 1): the analyze gate's."""
    gate = Gate(Direction([SERVER_IP], PORTS), Sampler(1.0), topo.window)
    n = 0
    for ts, lt, data in frames:
        p = decode_frame(ts, lt, data)
        if isinstance(p, PacketRecord) and gate.admit(p):
            n += 1
    return n


def split_between_connections(frames: list[Frame], timeout_s: float) -> int:
    """Where to cut a capture in two so that a restarted edge changes nothing: between connections (no
    4-tuple on both sides), and late enough that every connection of the first part that has not
    ended lies ``timeout_s`` before the first part's end (a timeout whether the workers judge it at the
    first part's end of input or at the second's). Returns the index of the second part's first frame."""
    def tuple_of(f: Frame) -> tuple[Any, ...] | None:  # either direction
        p = decode_frame(*f)
        if not isinstance(p, PacketRecord):
            return None
        a, b = (p.src, p.sport), (p.dst, p.dport)
        return (a, b) if a < b else (b, a)

    keys = [tuple_of(f) for f in frames]
    last = {k: i for i, k in enumerate(keys) if k is not None}
    ended: Counter[bytes] = Counter()
    pkts = client_packets(frames)
    for p in pkts:
        ended[p.packed_key] += bool(p.flags & (TH_RST | TH_FIN))
    open_last = max(p.ts for p in pkts if not ended[p.packed_key])
    reach = -1  # the last frame of the 4-tuples met before frame i
    for i in range(1, len(frames)):
        before = keys[i - 1]
        if before is not None:
            reach = max(reach, last[before])
        if reach < i and frames[i - 1][0] >= open_last + timeout_s + 1 and keys[i] is not None:
            return i
    raise AssertionError("no cut between connections late enough in the capture")


# -- edges, expectations, metrics ------------------------------------------------------------------------


def edge(bootstrap: str, topo_path: Path, edge_id: str, pcaps: list[Path], *extra: str) -> subprocess.Popen[str]:
    args = [a for p in pcaps for a in ("--pcap", str(p))]
    return subprocess.Popen([sys.executable, "-m", "rstscope.cli", "edge", *args, "--bootstrap", bootstrap,
                             "--topology", str(topo_path), "--edge-id", edge_id, "--server-ip", SERVER_IP,
                             "--server-port", "80,81", "--sample", "1", "--json", *extra],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(p: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    """The edge's JSON summary once it exited 0 with everything delivered."""
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    assert "delivery failures 0" in err, err
    stats: dict[str, Any] = loads(out.strip().splitlines()[-1])
    return stats


def keyed(rollup: Rollup) -> Rows:
    return {row_key_text(row_key_of(r)): r for r in rollup.rows()}


def analyze_together(paths: tuple[Path, ...], topo: config.Topology) -> tuple[Rows, Rows]:
    """`rstscope analyze a b c`: the rollup rows and the records (by id) of the three captures together."""
    records: Rows = {}

    def keep(rec: ConnectionRecord) -> None:
        records[rec["id"]] = dict(rec)

    an = Analyzer(topo, Options([SERVER_IP], PORTS), on_record=keep)
    an.run(list(paths))
    return keyed(an.rollup), records


def topic_packets(bootstrap: str, topic: str) -> tuple[dict[str, list[PacketRecord]], list[Watermark]]:
    """Every packet on the packets topic by edge id (in partition order), and every watermark."""
    by_edge: dict[str, list[PacketRecord]] = {}
    marks = []
    for _k, value, _p, _o in sorted(read_topic(bootstrap, topic, timeout=30), key=lambda m: (m[2], m[3])):
        msg = decode_message(value)
        if isinstance(msg, Watermark):
            marks.append(msg)
        else:
            assert isinstance(msg, Batch) and not msg.errors, msg
            by_edge.setdefault(msg.edge, []).extend(p for p, _geo in msg.packets)
    return by_edge, marks


def core_of_delivered(packets: list[PacketRecord], end_ts: float, topo: config.Topology) -> tuple[Rows, Rows]:
    """What `rstscope analyze` decides for these packets in time order, the input ending at ``end_ts``:
    the connection table, then a record and a rollup count for each connection not excluded."""
    w = topo.window
    rollup = Rollup(w.size_s)
    geo = GeoDB.empty()
    records: Rows = {}
    for f in ConnectionTable(w).feed(sorted(packets, key=lambda p: p.ts), end_ts=end_ts):
        if f.excluded:
            continue
        g = geo.lookup(f.conn.key[0])
        rec = make_record(f.conn, w.max_packets, topo.evidence, w.mode, g.country, g.asn, g.as_name)
        rollup.add(rec)
        records[rec["id"]] = dict(rec)
    return keyed(rollup), records


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def series(samples: Samples, name: str, **labels: str) -> list[float]:
    want = set(labels.items())
    return [v for (n, lab), v in samples.items() if n == name and want <= set(lab)]


def world_stages(rows: Rows) -> Counter[str]:
    stages: Counter[str] = Counter()
    for r in rows.values():
        if r["dimension"] == "world":
            stages.update(r["counts"])
    return +stages


def wait_committed(bootstrap: str, app_id: str, topic: str, timeout: float = 20) -> None:
    """Every packet is acked once its connection is decided: committed offsets reach the end offsets."""
    ends = end_offsets(bootstrap, topic)
    deadline = time.monotonic() + timeout
    while (got := committed(bootstrap, app_id, topic)) != ends:
        assert time.monotonic() < deadline, (got, ends)
        time.sleep(0.5)


def check_records(bootstrap: str, topic: str, expected: Rows) -> None:
    """The connections topic holds each expected record once, field for field."""
    got = [loads(v) for _k, v, _p, _o in read_topic(bootstrap, topic)]
    assert len(got) == len(expected)
    assert {r["id"]: r for r in got} == expected


# -- tests ------------------------------------------------------------------------------------------------


def test_three_edges_two_workers_match_analyze_of_the_captures_together(
        pipeline: Any, kafka_bootstrap: str, captures: tuple[Path, Path, Path]) -> None:
    """Three edges at once, interleaved on every partition, two workers: the rollups and connection ids
    are exactly those of `rstscope analyze` over the three captures together."""
    topo_path, topo, app_id, workers = pipeline
    expected, records = analyze_together(captures, topo)
    # each capture holds what its client did, and no 4-tuple is in two of them
    assert world_stages(expected) == {k: 3 * v for k, v in EXPECTED_STAGES.items()}
    assert len(records) == 3 * sum(EXPECTED_STAGES.values())
    for _ in range(2):
        p, log = workers.start()
        workers.wait_log(log, READY, p, 90)
    time.sleep(3)  # let the second rebalance settle
    procs = [edge(kafka_bootstrap, topo_path, name, [pcap]) for name, pcap in zip(EDGES, captures, strict=True)]
    try:
        stats = [finished(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [s["source"] for s in stats] == list(EDGES)
    assert all(s["sent"] > 0 and s["watermarks"] >= topo.topics["packets"].partitions for s in stats), stats
    rows = wait_rows(kafka_bootstrap, topo.topics["rollups"].name, expected, workers, timeout=60)
    assert rows == expected, workers.logs()
    check_records(kafka_bootstrap, topo.topics["connections"].name, records)
    wait_committed(kafka_bootstrap, app_id, topo.topics["packets"].name)


def test_killed_restarted_and_fast_edges(pipeline: Any, kafka_bootstrap: str,
                                         captures: tuple[Path, Path, Path]) -> None:
    """Edge A runs normally; B is replayed slowly and SIGKILLed halfway (no eof); C's clock runs 2
    minutes fast and it is restarted under the same id between connections. The rollups are exactly
    what the core decides for the packets the edges delivered, the input ending at the latest eof; B's
    windows close once it is idle (edges.idle_s), and C's clock makes nobody's packets late."""
    topo_path, topo, app_id, workers = pipeline
    packets_topic = topo.topics["packets"].name
    partitions = topo.topics["packets"].partitions
    tmp = topo_path.parent
    a_frames, b_frames, c_frames = (frames_of(p) for p in captures)
    c_shifted = [(ts + FAST_S, lt, data) for ts, lt, data in c_frames]
    cut = split_between_connections(c_shifted, topo.window.timeout_s)
    c1 = write_pcap(tmp / "c1.pcap", c_shifted[:cut])
    c2 = write_pcap(tmp / "c2.pcap", c_shifted[cut:])
    assert client_packets(c_shifted[cut:]), "the restarted edge C has nothing to send"

    proc, log = workers.start("--metrics-port", "0", "--metrics-host", "127.0.0.1")
    workers.wait_log(log, "metrics on http://", proc, 60)
    found = re.search(r"metrics on (http://\S+/metrics)", log.read_text())
    assert found, log.read_text()
    url = found.group(1)
    workers.wait_log(log, READY, proc, 90)

    def b_seen() -> tuple[int, set[int]]:
        """B's packets on the topic, and the partitions its watermarks reached."""
        n, parts = 0, set()
        for _k, value, part, _o in read_topic(kafka_bootstrap, packets_topic):
            msg = decode_message(value)
            if isinstance(msg, Watermark) and msg.source == "edge-B":
                parts.add(part)
            elif isinstance(msg, Batch) and msg.edge == "edge-B":
                n += len(msg.packets)
        return n, parts

    def wait_b(cond: Callable[[int, set[int]], bool], what: str, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while True:
            n, parts = b_seen()
            if cond(n, parts):
                return n
            assert eb.poll() is None, f"edge B ended before {what}: {eb.communicate()[1]}"
            assert time.monotonic() < deadline, f"edge B: {what} not seen in {timeout}s ({n} packets, {parts})"
            time.sleep(0.3)

    ea = edge(kafka_bootstrap, topo_path, "edge-A", [captures[0]])
    # a paced replay sends its batches and watermarks as it goes (every few frames), as a live edge does
    eb = edge(kafka_bootstrap, topo_path, "edge-B", [captures[1]], "--rate", str(B_RATE),
              "--watermark-interval", "0.05")
    try:
        finished(ea)
        # B spoke on every partition (it holds them all), then C, 2 minutes ahead, sends all of part 1
        wait_b(lambda n, parts: len(parts) == partitions, "watermarks on every partition")
        finished(edge(kafka_bootstrap, topo_path, "edge-C", [c1]))
        # B goes on after C's eof (its packets must not be late), then dies without an eof
        n0 = b_seen()[0]
        wait_b(lambda n, parts: n > n0, "more packets after edge C's first run")
        idle = series(scrape(url), "rstscope_edge_idle", edge="edge-B")
        assert idle == [0.0] * partitions, idle  # alive, it held every partition
        assert eb.poll() is None, "edge B ended before it was killed"
        eb.send_signal(signal.SIGKILL)
        eb.wait(10)
        killed = time.monotonic()
    finally:
        for p in (ea, eb):
            if p.poll() is None:
                p.kill()

    # B is idle on every partition within about edges.idle_s, although it never sent an eof
    deadline = killed + topo.edges.idle_s + 15
    while True:
        idle = series(scrape(url), "rstscope_edge_idle", edge="edge-B")
        if len(idle) == partitions and all(v == 1 for v in idle):
            break
        assert time.monotonic() < deadline, (idle, workers.logs())
        time.sleep(0.3)
    # once per partition: after the kill, never while it ran
    went_idle = rf"edge\(s\) [^\n]*'edge-B'[^\n]* silent for {topo.edges.idle_s:g} s: idle"
    assert len(re.findall(went_idle, log.read_text())) == partitions

    # C restarts under the same id with the rest of its capture
    finished(edge(kafka_bootstrap, topo_path, "edge-C", [c2]))

    by_edge, marks = topic_packets(kafka_bootstrap, packets_topic)
    assert sorted(by_edge) == sorted(EDGES)
    assert len(by_edge["edge-A"]) == gate_count(a_frames, topo)
    assert 0 < len(by_edge["edge-B"]) < gate_count(b_frames, topo), "B was not killed halfway"
    assert len(by_edge["edge-C"]) == gate_count(c_shifted, topo)
    ends = [m for m in marks if m.eof]
    assert {m.source for m in ends} == {"edge-A", "edge-C"}  # B never ended
    end_ts = max(m.ts for m in ends)
    assert end_ts == pytest.approx(max(ts for ts, _lt, _d in c_shifted), abs=1e-5)  # C's whole capture
    expected, records = core_of_delivered([p for ps in by_edge.values() for p in ps], end_ts, topo)
    assert world_stages(expected)["post_syn"] >= 2 * 4  # A's and C's SYN timeouts at least: the close decided them

    # within a bounded time, though B never ended its input
    rows = wait_rows(kafka_bootstrap, topo.topics["rollups"].name, expected, workers, timeout=30)
    assert rows == expected, workers.logs()
    check_records(kafka_bootstrap, topo.topics["connections"].name, records)
    assert read_topic(kafka_bootstrap, topo.topics["dead_letters"].name) == []  # C's packets were not refused

    samples = scrape(url)
    for name in EDGES:  # every edge is known, and none had a packet for a closed window
        assert series(samples, "rstscope_edge_late_packets_total", edge=name) == [0.0], (name, samples)
    assert series(samples, "rstscope_edges_idle")[0] >= 1
    wait_committed(kafka_bootstrap, app_id, packets_topic)
