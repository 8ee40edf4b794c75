"""Issue 16 through Kafka: the labelled multi-day input (tests/insights/scenario.py, real captures
time-shifted into networks) sent by `rstscope edge`, classified by `rstscope worker`, rolled up, and
judged by `rstscope alert-agent`. The alerts on the compacted alerts topic (the latest version of each
id) must equal what `rstscope analyze --rollups` + `detect` finds offline, the run whose precision,
recall and time to detect tests/insights/test_evaluation.py asserts; and a restarted agent, which
rebuilds its state from the rollups topic, must send the same alerts again. Nothing is mocked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("mmdb_writer")

from rstscope import cli, config
from rstscope.insights.alerts import detect
from tests.insights import scenario
from tests.kafka import test_pipeline
from tests.kafka.test_pipeline import READY, Workers, env, read_topic, rstscope

pytestmark = pytest.mark.kafka
work = test_pipeline.work


def offline_alerts(s: scenario.Scenario, topo: config.Topology) -> dict[str, dict[str, Any]]:
    out = s.dir / "rollups.jsonl"
    code = cli.main(["analyze", str(s.pcap), "--server-ip", scenario.SERVER_IP, "--geo", str(s.geo),
                     "--topology", str(s.topology), "--rollups", str(out), "--format", "json", "--no-progress"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {a.id: a.to_wire() for a in detect(rows, topo.alerts)}


def topic_alerts(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for key, value, _p, _o in read_topic(bootstrap, topic):
        assert key is not None
        latest[key.decode()] = json.loads(value)
    return latest


# the 15 days come as one backlog: a loaded worker runs its partitions far apart in wall time, and 8 s of
# settling gave late rows (docs/insights.md, "Its limit"); live, partitions move together
def start_agent(tmp: Path, bootstrap: str, topo_path: Path, n: int) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"alert-agent-{n}.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "rstscope.cli", "alert-agent", "--bootstrap", bootstrap,
                              "--topology", str(topo_path), "--settle-s", "30", "--flush-idle-s", "15",
                              "--report-every-s", "2"], stdout=out, stderr=subprocess.STDOUT, env=env())
    return p, log


def stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    p.wait(30)


def last_summary(log: Path) -> dict[str, int]:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("alert-agent: ")]
    assert lines, log.read_text()[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", lines[-1])}


def wait_alerts(bootstrap: str, topic: str, expected: dict[str, dict[str, Any]], log: Path,
                timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    got: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        got = topic_alerts(bootstrap, topic)
        if got == expected:
            return got
        time.sleep(2)
    return got


def test_alerts_through_kafka_equal_offline(work: Path, kafka_bootstrap: str) -> None:
    s = scenario.build(work / "scenario", days=15, events=True)
    tag = f"a{uuid.uuid4().hex[:8]}"
    raw = yaml.safe_load(s.topology.read_text())
    for role, t in raw["topics"].items():
        t["name"] = f"{tag}.{role}"
    raw["edges"] = {**raw.get("edges", {}), "idle_s": 3}  # one edge: a short warm-up
    # 15 days replayed in seconds: keep every bucket, whatever a partition's lag (rollup.retention_s)
    raw["rollup"] = {"retention_s": 30 * 86400}
    topo_path = work / "topology.yaml"
    topo_path.write_text(yaml.safe_dump(raw))
    topo = config.load(topo_path)
    expected = offline_alerts(s, topo)
    assert len(expected) >= len(s.events)
    app_id = f"{tag}-app"
    r = rstscope("topics", "apply", "--bootstrap", kafka_bootstrap, "--topology", str(topo_path), "--app-id", app_id)
    assert r.returncode == 0, r.stderr
    workers = Workers(work, kafka_bootstrap, topo_path, app_id)
    agent, log = start_agent(work, kafka_bootstrap, topo_path, 1)
    try:
        w, wlog = workers.start("--geo", str(s.geo))  # the worker geolocates: AS names, as analyze has them
        workers.wait_log(wlog, READY, w)
        r = rstscope("edge", "--pcap", str(s.pcap), "--bootstrap", kafka_bootstrap, "--topology", str(topo_path),
                     "--server-ip", scenario.SERVER_IP, "--sample", "1", timeout=300)
        assert r.returncode == 0, r.stderr
        alerts_topic = topo.topics["alerts"].name
        got = wait_alerts(kafka_bootstrap, alerts_topic, expected, log, timeout=120)
        stats = last_summary(log)
        if got != expected:
            (work / "alerts-offline.json").write_text(json.dumps(expected, indent=1, sort_keys=True))
            (work / "alerts-kafka.json").write_text(json.dumps(got, indent=1, sort_keys=True))
        assert got == expected, (stats, sorted(set(got) ^ set(expected)), workers.logs())
        assert stats.get("late_rows", 0) == 0 and stats.get("bad_rows", 0) == 0 and stats["bad_messages"] == 0, stats
        stop(agent)
        sent_before = sum(1 for _ in read_topic(kafka_bootstrap, alerts_topic))
        # a restarted agent rebuilds its state from the compacted rollups topic and sends the same alerts
        agent, log2 = start_agent(work, kafka_bootstrap, topo_path, 2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and last_summary_or_none(log2, "alerts_sent") < len(expected):
            time.sleep(1)
        assert sum(1 for _ in read_topic(kafka_bootstrap, alerts_topic)) > sent_before
        assert topic_alerts(kafka_bootstrap, alerts_topic) == expected
    finally:
        if agent.poll() is None:
            stop(agent)
        workers.stop_all()


def last_summary_or_none(log: Path, field: str) -> int:
    try:
        return last_summary(log).get(field, 0)
    except AssertionError:
        return 0
