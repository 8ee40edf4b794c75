"""The streaming pipeline on a real Kafka broker gives exactly the rollups of `rstscope analyze`.

Real capture (ip netns + veth + tcpdump + real TCP: graceful closes, resets after the handshake, after
the first and after later data packets, SYNs to a closed port), real broker, real `rstscope edge` and
`rstscope worker` processes. Nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from rstscope import config
from rstscope.codecs.jsonl import loads
from rstscope.core.rollup import row_key_of, row_key_text
from rstscope.offline import Analyzer, Options
from tests.netns import SERVER_IP, capture_client_run

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 4
TAIL = 13  # graceful connections, one a second, after the rounds: the client's ordinary traffic goes on

CLIENT = r"""
import socket, struct, subprocess, time
def abort(mode):
    s = socket.create_connection(("10.97.0.2", 80))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode != "ack":
        s.send(b"GET / HTTP/1.0\r\n"); time.sleep(0.05)
    if mode == "later":
        s.send(b"Host: x\r\n"); time.sleep(0.05)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
def curl():
    subprocess.run(["curl", "-s", "-o", "/dev/null", "http://10.97.0.2/"], check=True)
for _ in range(ROUNDS):
    for _ in range(2):
        curl()
    for mode in ("ack", "psh", "later"):
        abort(mode)
    s = socket.socket(); s.settimeout(0.3)
    try:
        s.connect(("10.97.0.2", 81))
    except OSError:
        pass
    s.close()
for _ in range(TAIL):
    time.sleep(1.0)
    curl()
""".replace("ROUNDS", str(ROUNDS)).replace("TAIL", str(TAIL))
# What the capture holds, by how it was made: per round two graceful requests (None), resets after the
# handshake (Post-ACK), after the first data packet (Post-PSH) and after a second one (Later), and a SYN
# to a closed port (the server's RST is not seen: a Post-SYN timeout, >= TAIL s before the input ends);
# then TAIL graceful requests. Every connection ended or was quiet long enough: none is incomplete.
EXPECTED_STAGES = {"post_syn": ROUNDS, "post_ack": ROUNDS, "post_psh": ROUNDS, "later_in_flow": ROUNDS,
                   "no_match": 2 * ROUNDS + TAIL}


def make_capture(path: Path) -> Path:
    """Real TCP between two network namespaces, captured on the server side with tcpdump.

    The capture ends when the client's traffic does. Its SYNs to the closed port have not ended (the
    client sent nothing else), so they are timeouts only because the client's ordinary traffic goes on
    for more than 10 s after the last of them (TAIL requests, one a second); nothing is appended.
    """
    return capture_client_run(path, "rstp", CLIENT, timeout=90, duration_s=4 + TAIL + 5)


def _workdir() -> Path:
    # not pytest's tmp_path: concurrent pytest sessions on this machine prune each other's basetemp
    return Path(tempfile.mkdtemp(prefix="rstscope-kafka-test-"))


@pytest.fixture
def work() -> Iterator[Path]:
    d = _workdir()
    yield d
    if not os.environ.get("RSTSCOPE_KEEP_WORK"):  # keep the worker logs for a post-mortem
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def capture() -> Iterator[Path]:
    cached = os.environ.get("RSTSCOPE_TEST_CAPTURE")
    if cached and Path(cached).is_file():
        yield Path(cached)
        return
    if os.geteuid() != 0 or not shutil.which("tcpdump") or not shutil.which("ip"):
        pytest.skip("making the capture needs root, ip netns and tcpdump")
    d = _workdir()
    yield make_capture(d / "mixed.pcap")
    shutil.rmtree(d, ignore_errors=True)


def analyze(pcap: Path, topo: config.Topology) -> tuple[dict[str, dict[str, Any]], set[str]]:
    ids: set[str] = set()
    an = Analyzer(topo, Options([SERVER_IP], [80, 81]), on_record=lambda r: ids.add(r["id"]))
    an.run([pcap])
    rows = {row_key_text(row_key_of(r)): r for r in an.rollup.rows()}
    return rows, ids


def test_capture_holds_what_the_client_did(capture: Path) -> None:
    """The counts that follow from the client script, with no end marker: nothing is incomplete."""
    an = Analyzer(config.load(), Options([SERVER_IP], [80, 81]))
    s = an.run([capture]).to_dict()
    assert s["stages"] == EXPECTED_STAGES, s
    assert s["excluded"]["incomplete"] == 0 and s["excluded"]["multi_syn"] == 0, s
    assert s["tags"]["timeout"] == ROUNDS and s["tags"]["reset"] == 3 * ROUNDS, s


# -- helpers ----------------------------------------------------------------------------------------------


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return e


def rstscope(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rstscope.cli", *args], capture_output=True, text=True,
                          env=env(), timeout=timeout)


def topology_file(tmp: Path, tag: str, **partitions: int) -> tuple[Path, config.Topology]:
    """The packaged topology with topic names unique to one test."""
    raw = yaml.safe_load(config.DEFAULT_PATH.read_text())
    for role, t in raw["topics"].items():
        t["name"] = f"{tag}.{role}"
        if role in partitions:
            t["partitions"] = partitions[role]
    raw["edges"] = {**raw.get("edges", {}), "idle_s": 3}  # one edge: a short warm-up (docs/streaming.md)
    path = tmp / f"topology-{tag}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, config.load(path)


class Workers:
    def __init__(self, tmp: Path, bootstrap: str, topo_path: Path, app_id: str) -> None:
        self.tmp, self.bootstrap, self.topo_path, self.app_id = tmp, bootstrap, topo_path, app_id
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"worker-{len(self.procs) + 1}.log"
        with open(log, "ab") as out:
            p = subprocess.Popen([sys.executable, "-m", "rstscope.cli", "worker", "--bootstrap", self.bootstrap,
                                  "--topology", str(self.topo_path), "--app-id", self.app_id,
                                  "--workers-dir", str(self.tmp / "workers"), "--session-timeout", "6", *extra],
                                 stdout=out, stderr=subprocess.STDOUT, env=env())
        self.procs.append((p, log))
        return p, log

    def wait_log(self, log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 60,
                 count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while log.read_text(errors="replace").count(needle) < count:
            assert proc.poll() is None, f"worker exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"{needle!r} not in {log} after {timeout}s:\n" \
                                                f"{log.read_text()[-4000:]}"
            time.sleep(0.2)

    def stop_all(self) -> None:
        for p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _ in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}" for _, log in self.procs)


READY = "Worker]: Ready"


def read_topic(bootstrap: str, topic: str, timeout: float = 10) -> list[tuple[bytes | None, bytes, int, int]]:
    """Every message of a topic, from the beginning to the end offsets of now."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in md.partitions:
            _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = hi
        want = {p for p, hi in ends.items() if hi > 0}
        c.assign([TopicPartition(topic, p, 0) for p in want])
        out = []
        deadline = time.monotonic() + timeout
        while want and time.monotonic() < deadline:
            for m in c.consume(500, timeout=0.5):
                if m.error() is not None:
                    continue
                out.append((m.key(), m.value(), m.partition(), m.offset()))
                if m.offset() + 1 >= ends[m.partition()]:
                    want.discard(m.partition())
        return out
    finally:
        c.close()


def latest_rows(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for key, value, _p, _o in read_topic(bootstrap, topic):
        rows[key.decode()] = loads(value)  # type: ignore[union-attr]
    return rows


def wait_rows(bootstrap: str, topic: str, expected: dict[str, dict[str, Any]], workers: Workers,
              timeout: float = 60) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = latest_rows(bootstrap, topic)
        if rows == expected:
            return rows
        time.sleep(1)
    return rows


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    return {tp.partition: tp.offset for tp in res.topic_partitions if tp.topic == topic}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "x"})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
    finally:
        c.close()


def run_edge(bootstrap: str, topo_path: Path, pcap: Path) -> dict[str, Any]:
    r = rstscope("edge", "--pcap", str(pcap), "--bootstrap", bootstrap, "--topology", str(topo_path),
                 "--server-ip", SERVER_IP, "--server-port", "80,81", "--sample", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert "delivery failures 0" in r.stderr
    return loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def pipeline(work: Path, kafka_bootstrap: str) -> Iterator[tuple[Path, config.Topology, str, Workers]]:
    tag = f"t{uuid.uuid4().hex[:8]}"
    topo_path, topo = topology_file(work, tag)
    app_id = f"{tag}-app"
    r = rstscope("topics", "apply", "--bootstrap", kafka_bootstrap, "--topology", str(topo_path),
                 "--app-id", app_id)
    assert r.returncode == 0, r.stderr
    workers = Workers(work, kafka_bootstrap, topo_path, app_id)
    try:
        yield topo_path, topo, app_id, workers
    finally:
        workers.stop_all()


# -- tests ------------------------------------------------------------------------------------------------


def _check_exact(kafka_bootstrap: str, topo: config.Topology, pcap: Path, workers: Workers, app_id: str,
                 ) -> None:
    expected, ids = analyze(pcap, topo)
    world = [r for r in expected.values() if r["dimension"] == "world"]
    stages: Counter[str] = Counter()
    for r in world:
        stages.update(r["counts"])
    assert +stages == EXPECTED_STAGES, stages
    rows = wait_rows(kafka_bootstrap, topo.topics["rollups"].name, expected, workers)
    assert rows == expected, workers.logs()
    got_ids = {loads(v)["id"] for _k, v, _p, _o in read_topic(kafka_bootstrap, topo.topics["connections"].name)}
    assert got_ids == ids
    # every packet is acked once its connection is decided: offsets reach the end of the topic
    wait_committed_at_end(kafka_bootstrap, app_id, topo.topics["packets"].name)


def wait_committed_at_end(bootstrap: str, app_id: str, topic: str, timeout: float = 20) -> None:
    """Every message of ``topic`` acked and committed by ``app_id``: offsets at the end of the topic."""
    ends = end_offsets(bootstrap, topic)
    deadline = time.monotonic() + timeout
    while committed(bootstrap, app_id, topic) != ends:
        assert time.monotonic() < deadline, (committed(bootstrap, app_id, topic), ends)
        time.sleep(0.5)


def test_one_worker_matches_analyze(pipeline: Any, kafka_bootstrap: str, capture: Path) -> None:
    topo_path, topo, app_id, workers = pipeline
    proc, log = workers.start()
    workers.wait_log(log, READY, proc, 90)
    stats = run_edge(kafka_bootstrap, topo_path, capture)
    assert stats["sent"] > 0 and stats["watermarks"] >= topo.topics["packets"].partitions
    _check_exact(kafka_bootstrap, topo, capture, workers, app_id)


def test_two_workers_match_analyze(pipeline: Any, kafka_bootstrap: str, capture: Path) -> None:
    topo_path, topo, app_id, workers = pipeline
    p1, log1 = workers.start()
    workers.wait_log(log1, READY, p1, 90)
    p2, log2 = workers.start()
    workers.wait_log(log2, READY, p2, 90)
    time.sleep(2)  # let the second rebalance settle
    run_edge(kafka_bootstrap, topo_path, capture)
    _check_exact(kafka_bootstrap, topo, capture, workers, app_id)
    # both workers did part of the work (the stats line comes every 5 s)
    for p, log in workers.procs:
        workers.wait_log(log, "'packets': ", p, 15)


def test_four_workers_match_analyze(pipeline: Any, kafka_bootstrap: str, capture: Path) -> None:
    """Four workers over the 8 packet partitions: every worker owns some, and the answer is unchanged."""
    topo_path, topo, app_id, workers = pipeline
    for _ in range(4):
        p, log = workers.start()
        workers.wait_log(log, READY, p, 120)
    time.sleep(3)  # let the last rebalance settle
    run_edge(kafka_bootstrap, topo_path, capture)
    _check_exact(kafka_bootstrap, topo, capture, workers, app_id)


def test_killed_worker_replays_without_double_counting(pipeline: Any, kafka_bootstrap: str,
                                                        capture: Path) -> None:
    """SIGKILL right after the result: a new worker restores the table, replays what was not committed,
    and the rollups are still exact (replayed connections are recognised by id)."""
    topo_path, topo, app_id, workers = pipeline
    # no commit before the kill: the whole packets topic is replayed
    p1, log1 = workers.start("--commit-interval", "600")
    workers.wait_log(log1, READY, p1, 90)
    run_edge(kafka_bootstrap, topo_path, capture)
    expected, ids = analyze(capture, topo)
    rollups, conns = topo.topics["rollups"].name, topo.topics["connections"].name
    assert wait_rows(kafka_bootstrap, rollups, expected, workers) == expected
    assert len(read_topic(kafka_bootstrap, conns)) == len(ids)
    p1.kill()
    p1.wait(10)
    assert committed(kafka_bootstrap, app_id, topo.topics["packets"].name) in ({}, {p: -1001 for p in range(8)})
    p2, log2 = workers.start()
    workers.wait_log(log2, READY, p2, 90)
    _check_exact(kafka_bootstrap, topo, capture, workers, app_id)
    # every connection was emitted twice, and counted once
    assert len(read_topic(kafka_bootstrap, conns)) == 2 * len(ids)
    workers.wait_log(log2, "'duplicates': ", p2, 15)


def test_dead_letters(pipeline: Any, kafka_bootstrap: str) -> None:
    import msgpack

    topo_path, topo, app_id, workers = pipeline
    packets = topo.topics["packets"].name
    garbage = {
        b"\xc1\xff\x00random": "malformed_record",  # not msgpack
        msgpack.packb([3, 2, "edge", []]): "unknown_schema_version",
        msgpack.packb([1, 0, 1.0, 4, b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1, 2, 2, 0, 0, 1, 64, 100,
                       0, 0])[:-3]: "malformed_record",  # truncated
    }
    prod = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    for i, value in enumerate(garbage):
        prod.produce(packets, value, f"k{i}".encode(), partition=i % 2)
    assert prod.flush(30) == 0
    proc, log = workers.start()
    workers.wait_log(log, READY, proc, 90)
    dead_topic = topo.topics["dead_letters"].name
    deadline = time.monotonic() + 40
    dead: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(dead) < len(garbage):
        dead = [loads(v) for _k, v, _p, _o in read_topic(kafka_bootstrap, dead_topic)]
        time.sleep(0.5)
    assert sorted(d["reason"] for d in dead) == sorted(garbage.values()), workers.logs()
    where = {value: (i % 2, i // 2) for i, value in enumerate(garbage)}  # (partition, offset)
    for d in dead:
        value = bytes.fromhex(d["value_hex"])
        assert d["topic"] == packets and (d["partition"], d["offset"]) == where[value]
        assert d["reason"] == garbage[value]
    # the worker goes on and commits past the garbage
    deadline = time.monotonic() + 20
    while committed(kafka_bootstrap, app_id, packets).get(0) != 2:
        assert proc.poll() is None and time.monotonic() < deadline, workers.logs()
        time.sleep(0.5)


def test_topics_check_and_worker_refuse_mismatch(work: Path, kafka_bootstrap: str) -> None:
    tag = f"t{uuid.uuid4().hex[:8]}"
    topo_path, topo = topology_file(work, tag)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    name = topo.topics["packets"].name
    admin.create_topics([NewTopic(name, 3, 1)])[name].result(30)
    r = rstscope("topics", "apply", "--bootstrap", kafka_bootstrap, "--topology", str(topo_path), "--app-id", tag)
    assert r.returncode == 1 and f"{name}: has 3 partitions, topology says 8" in r.stderr, r.stderr
    r = rstscope("topics", "check", "--bootstrap", kafka_bootstrap, "--topology", str(topo_path), "--app-id", tag)
    assert r.returncode == 1 and "MISMATCH" in r.stderr
    r = rstscope("worker", "--bootstrap", kafka_bootstrap, "--topology", str(topo_path), "--app-id", tag,
                 "--workers-dir", str(work / "w"), timeout=60)
    assert r.returncode == 2 and "REFUSING" in r.stderr and "3 partitions" in r.stderr, r.stderr
    r = rstscope("edge", "--pcap", str(topo_path), "--bootstrap", kafka_bootstrap, "--topology", str(topo_path))
    assert r.returncode == 2 and "3 partitions" in r.stderr, r.stderr


def test_worker_joins_mid_stream(pipeline: Any, kafka_bootstrap: str, capture: Path) -> None:
    """A second worker joins while packets flow: partitions move with connections half-seen in the
    first worker's memory. Unacked messages are replayed by their new owner; the result stays exact."""
    topo_path, topo, app_id, workers = pipeline
    p1, log1 = workers.start()
    workers.wait_log(log1, READY, p1, 90)
    edge = subprocess.Popen([sys.executable, "-m", "rstscope.cli", "edge", "--pcap", str(capture), "--bootstrap",
                             kafka_bootstrap, "--topology", str(topo_path), "--server-ip", SERVER_IP,
                             "--server-port", "80,81", "--sample", "1", "--rate", "20"],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers.wait_log(log1, "'packets': ", p1, 20)  # the first worker is mid-stream
        p2, log2 = workers.start()
        workers.wait_log(log2, READY, p2, 90)
        _out, err = edge.communicate(timeout=60)
    finally:
        if edge.poll() is None:
            edge.kill()
    assert edge.returncode == 0, err
    _check_exact(kafka_bootstrap, topo, capture, workers, app_id)
    text = log1.read_text()
    assert text.count(READY) == 1 and "rebalanc" in text.lower()
