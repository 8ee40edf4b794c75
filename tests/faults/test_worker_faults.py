"""Workers crash (SIGKILL at a random point), join and leave while packets flow, and restart after
their windows closed: the rollups always equal `Analyzer` on the same capture, nothing lost, nothing
counted twice. Real 3-broker Kafka 4.4 cluster (RF 3, min.insync.replicas 2), real processes.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from . import synth
from .harness import (
    READY,
    Run,
    check_synth_counts,
    check_verdict,
    counter_from_logs,
    latest_rows,
    offset_guard_counts,
    read_topic,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

RUNS = int(os.environ.get("RSTSCOPE_FAULT_RUNS", "2"))
CONNECTIONS = int(os.environ.get("RSTSCOPE_FAULT_CONNECTIONS", "1500"))
RATE = 1200.0  # frames/s: the stream lasts several seconds, so faults land in its middle


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = synth.make(tmp_path_factory.mktemp("cap") / "faults.pcap", CONNECTIONS)
    check_synth_counts(path, CONNECTIONS)
    return path


def _frames(pcap: Path) -> int:
    from rstscope.capture.files import read_frames

    return sum(1 for _ in read_frames(pcap))


def test_worker_sigkill_at_random_point(kafka_cluster3: Any, work: Path, capture: Path,
                                        figures: dict[str, Any]) -> None:
    """Two workers; one is SIGKILLed at a random moment of the stream and a replacement starts. The
    survivor takes over after the session timeout, the replacement joins: rebalances with held state."""
    rng = random.Random(os.environ.get("RSTSCOPE_FAULT_SEED") or None)
    duration = _frames(capture) / RATE
    runs: list[dict[str, Any]] = []
    for i in range(RUNS):
        run = Run(work / f"run{i}", kafka_cluster3.bootstrap)
        run.create_topics()
        try:
            a, b = run.start_worker(), run.start_worker()
            run.wait_log(a, READY)
            run.wait_log(b, READY)
            edge = run.edge(capture, rate=RATE)
            at = rng.uniform(0.1, 0.9) * duration
            time.sleep(at)
            victim = rng.choice([a, b])
            victim.popen.kill()
            victim.popen.wait(10)
            run.start_worker()
            rc, stats = run.edge_result(edge)
            assert rc == 0, run.logs()
            v = run.verdict(capture)
            # a failing run still counts in the report
            figures["lost"] = figures.get("lost", 0) + v["lost"]
            figures["double_counted"] = figures.get("double_counted", 0) + v["double_counted"]
            figures["runs"] = figures["kills"] = i + 1
            check_verdict(v, run)
            run.wait_committed_at_end()
            dups = sum(counter_from_logs(p.log.read_text(), "duplicates") for p in run.workers_alive())
            runs.append({"kill_at_s": round(at, 2), "produced": stats["delivered"], **v,
                         "rollup_duplicates_dropped": dups, "offset_guard": offset_guard_counts(run)})
        finally:
            run.stop_all()
    figures.update(runs=len(runs), kills=len(runs), produced=sum(r["produced"] for r in runs),
                   lost=sum(r["lost"] for r in runs), double_counted=sum(r["double_counted"] for r in runs),
                   re_emitted=sum(r["re_emitted"] for r in runs), connections=runs[0]["connections"],
                   kill_at_s=[r["kill_at_s"] for r in runs], stream_s=round(duration, 1),
                   rollup_duplicates_dropped=[r["rollup_duplicates_dropped"] for r in runs],
                   offset_guard=[r["offset_guard"] for r in runs])


def test_workers_join_and_leave_mid_stream(kafka_cluster3: Any, work: Path, capture: Path,
                                           figures: dict[str, Any]) -> None:
    """Worker 1 alone; worker 2 joins; worker 1 leaves (SIGTERM); worker 3 joins: three rebalances
    while connections are half-built in memory."""
    run = Run(work, kafka_cluster3.bootstrap)
    run.create_topics()
    try:
        w1 = run.start_worker()
        run.wait_log(w1, READY)
        rate = RATE / 4
        edge = run.edge(capture, rate=rate)
        t0 = time.monotonic()
        run.wait_log(w1, "'packets': ", 30)
        w2 = run.start_worker()
        run.wait_log(w2, READY)
        t_join = time.monotonic() - t0
        w1.popen.terminate()
        w1.popen.wait(30)
        t_leave = time.monotonic() - t0
        w3 = run.start_worker()
        run.wait_log(w3, READY)
        t_join3 = time.monotonic() - t0
        rc, stats = run.edge_result(edge)
        t_end = time.monotonic() - t0
        assert rc == 0, run.logs()
        assert t_join3 < t_end, "the stream ended before the last join: make it longer"
        v = run.verdict(capture)
        figures.update(**v)  # a failing run still counts in the report
        check_verdict(v, run)
        run.wait_committed_at_end()
        figures.update(produced=stats["delivered"], **v, join_s=round(t_join, 1), leave_s=round(t_leave, 1),
                       join3_s=round(t_join3, 1), stream_end_s=round(t_end, 1), rebalances=3,
                       offset_guard=offset_guard_counts(run))
    finally:
        run.stop_all()


def test_restart_after_windows_closed(kafka_cluster3: Any, work: Path, capture: Path,
                                      figures: dict[str, Any]) -> None:
    """All windows of a capture are closed and committed; the worker is SIGKILLed and a new one starts:
    nothing is emitted again. A later capture (one hour on) then adds its windows, once each."""
    run = Run(work, kafka_cluster3.bootstrap)
    run.create_topics()
    later = synth.make(work / "later.pcap", 300, seed=11, t0=synth.T0 + 3600)
    check_synth_counts(later, 300, seed=11, t0=synth.T0 + 3600)
    try:
        w1 = run.start_worker()
        run.wait_log(w1, READY)
        rc, s1 = run.edge_result(run.edge(capture))
        assert rc == 0
        v1 = run.verdict(capture)
        assert v1["rows_equal"], (v1, run.logs())
        run.wait_committed_at_end()
        time.sleep(2)  # the rollup input is acked after its flush; let its commit land too
        n_rollup_msgs = len(read_topic(run.conf, run.topic("rollups")))
        n_conn_msgs = v1["connection_messages"]
        w1.popen.kill()
        w1.popen.wait(10)
        w2 = run.start_worker()
        run.wait_log(w2, READY)
        time.sleep(8)  # a restarted worker that re-emitted anything would have done so by now
        conns_after = read_topic(run.conf, run.topic("connections"))
        rollups_after = read_topic(run.conf, run.topic("rollups"))
        assert len(conns_after) == n_conn_msgs, "a closed window was emitted again after the restart"
        assert len(rollups_after) == n_rollup_msgs
        rc, s2 = run.edge_result(run.edge(later))
        assert rc == 0
        from .harness import analyze

        exp1, ids1 = analyze(capture, run.topo)
        exp2, ids2 = analyze(later, run.topo)
        assert not set(exp1) & set(exp2)
        rows = run.wait_exact({**exp1, **exp2})
        assert rows == {**exp1, **exp2}, run.logs()
        per_id = Counter(r[0] for r in read_topic(run.conf, run.topic("connections")))
        assert set(per_id.values()) == {1} and len(per_id) == len(ids1) + len(ids2)
        figures.update(produced=s1["delivered"] + s2["delivered"], lost=0, double_counted=0, kills=1,
                       windows_before=len({r["bucket_start"] for r in exp1.values()}),
                       windows_after=len({r["bucket_start"] for r in rows.values()}),
                       connections=len(ids1) + len(ids2), re_emitted_after_restart=0,
                       rollup_messages_before_restart=n_rollup_msgs)
        _ = latest_rows
    finally:
        run.stop_all()
