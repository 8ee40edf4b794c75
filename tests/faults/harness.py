"""Real processes on a real cluster for the fault tests: topics, workers, the edge, readers, checks.

Everything is compared with ``Analyzer`` on the very same capture file. The checks return figures
(records produced, connections lost, rollup double counts, ...) that the tests put in the report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from rstscope import config
from rstscope.codecs.jsonl import loads
from rstscope.core.rollup import row_key_of, row_key_text
from rstscope.offline import Analyzer, Options
from rstscope.streams.topics import all_specs

from .synth import PORTS, SERVER_IP

REPO = Path(__file__).resolve().parents[2]
READY = "Worker]: Ready"


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    e.update(extra or {})
    return e


def rstscope(*args: str, timeout: float = 120, extra_env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rstscope.cli", *args], capture_output=True, text=True,
                          env=env(extra_env), timeout=timeout)


def topology_file(tmp: Path, tag: str, replication: int, edges_idle_s: float = 3) -> tuple[Path, config.Topology]:
    """The default topology on topics of its own. ``edges.idle_s`` is short (3 s): it is the warm-up of a
    partition new to a worker, and how long a killed edge holds windows back (docs/streaming.md)."""
    raw = yaml.safe_load(config.DEFAULT_PATH.read_text())
    for role, t in raw["topics"].items():
        t["name"] = f"{tag}.{role}"
        t["replication"] = replication
    raw["edges"] = {**raw.get("edges", {}), "idle_s": edges_idle_s}
    path = tmp / f"topology-{tag}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, config.load(path)


def analyze(pcap: Path, topo: config.Topology) -> tuple[dict[str, dict[str, Any]], set[str]]:
    ids: set[str] = set()
    opts = Options([SERVER_IP], list(PORTS))
    if hasattr(opts, "engine"):
        opts.engine = "packet"  # the per-packet reference
    an = Analyzer(topo, opts, on_record=lambda r: ids.add(r["id"]))
    an.run([pcap])
    rows = {row_key_text(row_key_of(r)): r for r in an.rollup.rows()}
    return rows, ids


def check_synth_counts(pcap: Path, connections: int, **kw: Any) -> dict[str, Any]:
    """The capture holds what tests/faults/synth.py made it of: Analyzer's counts equal ``synth.expected``
    (no end marker: nothing is incomplete because of where the capture ends)."""
    from .synth import expected

    want = expected(connections, **kw)
    s = Analyzer(config.load(), Options([SERVER_IP], list(PORTS))).run([pcap]).to_dict()
    got = {"stages": s["stages"], "multi_syn": s["excluded"]["multi_syn"],
           "incomplete": s["excluded"]["incomplete"], "timeouts": s["tags"]["timeout"]}
    assert got == want, (got, want)
    return want


def client_conf(bootstrap: str, security: dict[str, str] | None = None) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, **(security or {})}


def read_topic(conf: dict[str, Any], topic: str, timeout: float = 20) -> list[tuple[bytes | None, bytes, int, int]]:
    """Every message of a topic, from the beginning to the end offsets of now."""
    c = Consumer({**conf, "group.id": f"reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + timeout
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: _end_offset(c, topic, p, deadline) for p in md.partitions}
        want = {p for p, hi in ends.items() if hi > 0}
        c.assign([TopicPartition(topic, p, 0) for p in want])
        out: list[tuple[bytes | None, bytes, int, int]] = []
        while want and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                value, part, off = m.value(), m.partition(), m.offset()
                if m.error() is not None or value is None or part is None or off is None:
                    continue
                out.append((m.key(), value, part, off))
                if off + 1 >= ends[part]:
                    want.discard(part)
        assert not want, f"could not read {topic} partitions {want} to their end"
        return out
    finally:
        c.close()


def _end_offset(c: Consumer, topic: str, partition: int, deadline: float) -> int:
    """A partition's end offset; retried while its leader is unknown (a broker was just killed)."""
    while True:
        try:
            return int(c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
        except KafkaException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def records_on_topic(conf: dict[str, Any], topic: str) -> int:
    """Packet records and watermarks on a packets topic (a batch message holds many records): what an
    edge's `delivered` counts."""
    from rstscope.codecs.packet import Watermark, decode_message

    n = 0
    for _k, value, _p, _o in read_topic(conf, topic):
        m = decode_message(value)
        n += 1 if isinstance(m, Watermark) else len(m.packets)
    return n


def expected_from_topic(conf: dict[str, Any], topo: config.Topology
                        ) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The rollup rows (keyed by ``row_key_text``) and connection ids the core makes of the packet
    records actually on the packets topic, as `rstscope analyze` would: every record of every batch,
    sorted by time, through one ``ConnectionTable`` closed at the latest ``eof`` watermark.

    The reference when edges are killed: what a killed edge read but never delivered is not on the
    topic, so it must not be expected either; what is on the topic must be counted exactly once."""
    from rstscope.codecs.packet import EdgeGeo, Watermark, decode_message
    from rstscope.core.record import make_record
    from rstscope.core.rollup import Rollup
    from rstscope.core.table import ConnectionTable
    from rstscope.geo import GeoDB
    from rstscope.packet import PacketRecord

    packets: list[PacketRecord] = []
    geo_of: dict[bytes, EdgeGeo] = {}
    end = float("-inf")
    for _k, value, _p, _o in read_topic(conf, topo.topics["packets"].name):
        m = decode_message(value)
        if isinstance(m, Watermark):
            if m.eof:
                end = max(end, m.ts)
            continue
        assert not m.errors, m.errors  # an edge writes no bad record
        for pkt, g in m.packets:
            packets.append(pkt)
            if g is not None:
                geo_of.setdefault(pkt.packed_key, g)
    assert end > float("-inf"), "no eof watermark on the packets topic"
    packets.sort(key=lambda p: p.ts)  # stable: a connection's packets keep their topic order
    w = topo.window
    geo = GeoDB.empty()
    rollup = Rollup(w.size_s)
    ids: set[str] = set()
    for f in ConnectionTable(w).feed(packets, end_ts=end):
        if f.excluded:
            continue
        eg = geo_of.get(f.conn.pkey)
        if eg is not None:
            country, asn, as_name = eg.country, eg.asn, ""
        else:
            gi = geo.lookup(f.conn.key[0])
            country, asn, as_name = gi.country, gi.asn, gi.as_name
        rec = make_record(f.conn, w.max_packets, topo.evidence, w.mode, country, asn, as_name)
        rollup.add(rec)
        ids.add(rec["id"])
    rows = {row_key_text(row_key_of(r)): r for r in rollup.rows()}
    return rows, ids


def latest_rows(conf: dict[str, Any], topic: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for key, value, _p, _o in read_topic(conf, topic):
        rows[(key or b"").decode()] = loads(value)
    return rows


def committed(conf: dict[str, Any], group: str, topic: str) -> dict[int, int]:
    admin = AdminClient(conf)
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(20)
    return {tp.partition: tp.offset for tp in res.topic_partitions if tp.topic == topic}


def end_offsets(conf: dict[str, Any], topic: str) -> dict[int, int]:
    c = Consumer({**conf, "group.id": "x"})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
    finally:
        c.close()


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    name: str


@dataclass
class Run:
    """One pipeline on fresh topics (unique names) of a cluster."""

    work: Path
    bootstrap: str
    replication: int = 3
    min_isr: int = 2
    security: dict[str, str] = field(default_factory=dict)  # librdkafka settings for plain clients
    proc_env: dict[str, str] = field(default_factory=dict)  # env of worker/topics subprocesses
    tag: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:8]}")
    procs: list[Proc] = field(default_factory=list)
    edges_idle_s: float = 3  # topology edges.idle_s

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.topo_path, self.topo = topology_file(self.work, self.tag, self.replication, self.edges_idle_s)
        self.app_id = f"{self.tag}-app"
        self.conf = client_conf(self.bootstrap, self.security)

    def topic(self, role: str) -> str:
        return self.topo.topics[role].name

    def create_topics(self) -> None:
        r = rstscope("topics", "apply", "--bootstrap", self.bootstrap, "--topology", str(self.topo_path),
                     "--app-id", self.app_id, extra_env=self.proc_env)
        assert r.returncode == 0, r.stderr
        if self.min_isr > 1:  # topology override: min.insync.replicas (not a topology.yaml field)
            admin = AdminClient(self.conf)
            res = [ConfigResource(ResourceType.TOPIC, s.name, incremental_configs=[
                ConfigEntry("min.insync.replicas", str(self.min_isr), incremental_operation=AlterConfigOpType.SET)])
                for s in all_specs(self.topo, self.app_id)]
            for f in admin.incremental_alter_configs(res).values():
                f.result(30)

    # -- workers -------------------------------------------------------------------------------------

    def start_worker(self, *extra: str) -> Proc:
        n = sum(1 for p in self.procs if p.name.startswith("worker"))
        log = self.work / f"worker-{n + 1}.log"
        with open(log, "ab") as out:
            p = subprocess.Popen([sys.executable, "-m", "rstscope.cli", "worker", "--bootstrap", self.bootstrap,
                                  "--topology", str(self.topo_path), "--app-id", self.app_id,
                                  "--workers-dir", str(self.work / "workers"), "--session-timeout", "6",
                                  "--commit-interval", "1", *extra],
                                 stdout=out, stderr=subprocess.STDOUT, env=env(self.proc_env))
        proc = Proc(p, log, f"worker-{n + 1}")
        self.procs.append(proc)
        return proc

    def wait_log(self, proc: Proc, needle: str, timeout: float = 90, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while proc.log.read_text(errors="replace").count(needle) < count:
            assert proc.popen.poll() is None, f"{proc.name} exited {proc.popen.returncode}:\n{self.tail(proc)}"
            assert time.monotonic() < deadline, f"{needle!r} not in {proc.log} after {timeout}s:\n{self.tail(proc)}"
            time.sleep(0.2)

    def tail(self, proc: Proc, n: int = 4000) -> str:
        return proc.log.read_text(errors="replace")[-n:]

    def workers_alive(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("worker") and p.popen.poll() is None]

    def stop_all(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(30)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(10)

    def logs(self) -> str:
        """The tail of every process's log, and the first traceback of each (the tail is mostly stats)."""
        out = []
        for p in self.procs:
            text = p.log.read_text(errors="replace")
            i = text.find("Traceback")
            first = f"\n[first traceback]\n{text[max(0, i - 300):i + 2500]}" if i >= 0 else ""
            out.append(f"--- {p.log}{first}\n[tail]\n{self.tail(p, 2500)}")
        return "\n".join(out)

    # -- edge ----------------------------------------------------------------------------------------

    def edge(self, pcap: Path, *extra: str, rate: float | None = None) -> Proc:
        log = self.work / f"edge-{len(self.procs)}.log"
        args = [sys.executable, "-m", "rstscope.cli", "edge", "--pcap", str(pcap), "--bootstrap", self.bootstrap,
                "--topology", str(self.topo_path), "--server-ip", SERVER_IP,
                "--server-port", ",".join(map(str, PORTS)), "--sample", "1", "--json", *extra]
        if rate:
            args += ["--rate", str(rate)]
        with open(log, "ab") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env(self.proc_env))
        proc = Proc(p, log, "edge")
        self.procs.append(proc)
        return proc

    def edge_result(self, proc: Proc, timeout: float = 180) -> tuple[int, dict[str, Any]]:
        rc = proc.popen.wait(timeout)
        text = proc.log.read_text(errors="replace")
        stats: dict[str, Any] = {}
        for line in text.splitlines():
            if line.startswith("{"):
                stats = loads(line.encode())
        return rc, stats

    # -- checks --------------------------------------------------------------------------------------

    def write_evidence(self, expected: dict[str, dict[str, Any]], ids: set[str], rows: dict[str, dict[str, Any]],
                       got_ids: set[str]) -> None:
        """verdict.json next to the logs: which ids never reached the connections topic, the rollup
        input or the rollup table, which were counted twice, and the rows that differ."""
        import json

        counted = _counted_ids(self.conf, self.app_id)
        forwarded = _forwarded_ids(self.conf, self.app_id)
        (self.work / "verdict.json").write_text(json.dumps({
            "ids_missing": sorted(ids - got_ids), "ids_unexpected": sorted(got_ids - ids),
            "not_forwarded": sorted(ids - forwarded),
            "not_counted": sorted(ids - set(counted)), "counted_unexpected": sorted(set(counted) - ids),
            "counted_twice": sorted(i for i, n in counted.items() if n > 1),
            "packets_topic": _packet_messages(self.conf, self.topic("packets")),
            "diff": {k: [expected.get(k), rows.get(k)] for k in set(expected) | set(rows)
                     if expected.get(k) != rows.get(k)}}, indent=1, default=str))

    def wait_exact(self, expected: dict[str, dict[str, Any]], timeout: float = 150) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            rows = latest_rows(self.conf, self.topic("rollups"))
            if rows == expected:
                break
            time.sleep(1)
        return rows

    def wait_committed_at_end(self, timeout: float = 60) -> None:
        packets = self.topic("packets")
        ends = end_offsets(self.conf, packets)
        deadline = time.monotonic() + timeout
        while (got := committed(self.conf, self.app_id, packets)) != ends:
            assert time.monotonic() < deadline, f"committed {got} != ends {ends}\n{self.logs()}"
            time.sleep(0.5)

    def verdict(self, pcap: Path, timeout: float = 150) -> dict[str, Any]:
        """Wait for the rollups to equal Analyzer's, then count what was lost or double counted."""
        return self.verdict_against(*analyze(pcap, self.topo), timeout=timeout)

    def verdict_against(self, expected: dict[str, dict[str, Any]], ids: set[str], timeout: float = 150
                        ) -> dict[str, Any]:
        """``verdict`` against given rows and ids (e.g. ``expected_from_topic``, when edges were killed)."""
        rows = self.wait_exact(expected, timeout)
        conns = [loads(v) for _k, v, _p, _o in read_topic(self.conf, self.topic("connections"))]
        got_ids = {c["id"] for c in conns}
        lost = dup = 0
        for k, want in expected.items():
            if want["dimension"] != "world":
                continue
            have = rows.get(k, {}).get("total", 0)
            lost += max(0, want["total"] - have)
            dup += max(0, have - want["total"])
        extra_rows = sorted(set(rows) - set(expected))
        if rows != expected:  # keep the evidence next to the logs
            self.write_evidence(expected, ids, rows, got_ids)
        return {"connections": len(ids), "rows": len(expected), "rows_equal": rows == expected,
                "lost": lost, "double_counted": dup, "extra_rows": extra_rows,
                "ids_missing": len(ids - got_ids), "ids_unexpected": len(got_ids - ids),
                "connection_messages": len(conns), "re_emitted": len(conns) - len(got_ids)}


def _counted_ids(conf: dict[str, Any], app_id: str) -> Counter[str]:
    """Connection ids in the rollup table's changelog (latest value per ``<partition>:<offset>`` key: the
    ids a rollup-input message brought), with how many entries hold each."""
    import orjson

    latest: dict[bytes | None, bytes] = {}
    for k, v, _p, _o in read_topic(conf, f"{app_id}-rollup-records-changelog"):
        latest[k] = v
    out: Counter[str] = Counter()
    for v in latest.values():
        try:
            d = orjson.loads(v)
        except orjson.JSONDecodeError:
            continue
        if isinstance(d, dict):
            out.update(row[0] for row in d.get("r", []))
    return out


def _packet_messages(conf: dict[str, Any], topic: str) -> dict[str, Any]:
    """The packets topic as evidence: packet records on it, and any packet batch written twice (same
    bytes at two offsets: a duplicate from the producer, which the worker would count twice)."""
    from rstscope.codecs.packet import Watermark, decode_message

    records = 0
    where: dict[bytes, list[str]] = {}
    for _k, v, p, o in read_topic(conf, topic):
        msg = decode_message(v or b"")
        if isinstance(msg, Watermark):
            continue
        records += len(msg.packets)
        where.setdefault(v or b"", []).append(f"{p}:{o}")
    return {"packet_records": records, "batches_written_twice": [w for w in where.values() if len(w) > 1]}


def _forwarded_ids(conf: dict[str, Any], app_id: str) -> set[str]:
    """Connection ids on the rollup-input topic (each message: a JSON array of records)."""
    from rstscope.codecs.jsonl import loads_array

    return {r["id"] for _k, v, _p, _o in read_topic(conf, f"{app_id}-rollup-input") for r in loads_array(v)}


def check_verdict(v: dict[str, Any], run: Run) -> None:
    """Nothing lost, nothing counted twice, no unexpected id or row (evidence in verdict.json if not)."""
    assert v["ids_unexpected"] == 0 and v["double_counted"] == 0 and not v["extra_rows"], (v, run.logs())
    assert v["ids_missing"] == 0 and v["lost"] == 0 and v["rows_equal"], (v, run.logs())
    assert not worker_bugs(run), worker_bugs(run)


# errors in a worker log that are bugs whatever the fault (a table written from a timer went unnoticed
# for a session: the checkpoint retried it, and only the counter timer_error said so)
BUG_MARKERS = ("Cannot modify table key from outside of stream iteration", "a record could not be processed")


def worker_bugs(run: Run) -> dict[str, int]:
    """How often each bug marker occurs in the logs of a run's workers."""
    out: dict[str, int] = {}
    for p in run.procs:
        if p.name.startswith("worker") and p.log.exists():
            text = p.log.read_text(errors="replace")
            for m in BUG_MARKERS:
                if m in text:
                    out[m] = out.get(m, 0) + text.count(m)
    return out


def offset_guard_counts(run: Run) -> dict[str, int]:
    """What the agents' offset guards refused or repaired, summed over every worker of a run."""
    import re

    out: dict[str, int] = {}
    for p in run.procs:
        if p.name.startswith("worker"):
            text = p.log.read_text(errors="replace")
            for name in set(re.findall(r"'(offset_[a-z]+:[a-z]+)': ", text)):
                out[name] = out.get(name, 0) + counter_from_logs(text, name)
    return dict(sorted(out.items()))


def counter_from_logs(text: str, name: str) -> int:
    """The last value of a counter in the workers' ``rstscope stats`` lines of one log."""
    import re

    vals = re.findall(rf"'{re.escape(name)}': (\d+)", text)
    return int(vals[-1]) if vals else 0
