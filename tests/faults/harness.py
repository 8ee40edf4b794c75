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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from rstscope import config
from rstscope.codecs.jsonl import loads
from rstscope.core.rollup import row_key_text
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


def topology_file(tmp: Path, tag: str, replication: int) -> tuple[Path, config.Topology]:
    raw = yaml.safe_load(config.DEFAULT_PATH.read_text())
    for role, t in raw["topics"].items():
        t["name"] = f"{tag}.{role}"
        t["replication"] = replication
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
    rows = {row_key_text((r["bucket_start"], r["dimension"], r["key"])): r for r in an.rollup.rows()}
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
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
        want = {p for p, hi in ends.items() if hi > 0}
        c.assign([TopicPartition(topic, p, 0) for p in want])
        out = []
        deadline = time.monotonic() + timeout
        while want and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is not None:
                    continue
                out.append((m.key(), m.value(), m.partition(), m.offset()))
                if m.offset() + 1 >= ends[m.partition()]:
                    want.discard(m.partition())
        assert not want, f"could not read {topic} partitions {want} to their end"
        return out
    finally:
        c.close()


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

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.topo_path, self.topo = topology_file(self.work, self.tag, self.replication)
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
        expected, ids = analyze(pcap, self.topo)
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
            changelog = {(k or b"").decode().strip('"') for k, _v, _p, _o in  # keys may be JSON strings
                         read_topic(self.conf, f"{self.app_id}-rollup-records-changelog")}
            forwarded = {loads(v)["id"] for _k, v, _p, _o in read_topic(self.conf, f"{self.app_id}-rollup-input")}
            import json

            (self.work / "verdict.json").write_text(json.dumps({
                "ids_missing": sorted(ids - got_ids), "ids_unexpected": sorted(got_ids - ids),
                "not_forwarded": sorted(ids - forwarded),
                "not_counted": sorted(ids - changelog), "counted_unexpected": sorted(changelog - ids),
                "diff": {k: [expected.get(k), rows.get(k)] for k in set(expected) | set(rows)
                         if expected.get(k) != rows.get(k)}}, indent=1, default=str))
        return {"connections": len(ids), "rows": len(expected), "rows_equal": rows == expected,
                "lost": lost, "double_counted": dup, "extra_rows": extra_rows,
                "ids_missing": len(ids - got_ids), "ids_unexpected": len(got_ids - ids),
                "connection_messages": len(conns), "re_emitted": len(conns) - len(got_ids)}


def check_verdict(v: dict[str, Any], run: Run) -> None:
    """Nothing lost, nothing counted twice, no unexpected id or row (evidence in verdict.json if not)."""
    assert v["ids_unexpected"] == 0 and v["double_counted"] == 0 and not v["extra_rows"], (v, run.logs())
    assert v["ids_missing"] == 0 and v["lost"] == 0 and v["rows_equal"], (v, run.logs())


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
