"""Broker faults under producer load, on a real 3-broker Kafka 4.4 cluster (RF 3, min.insync.replicas 2).

- one broker of three SIGKILLed mid-stream and restarted: the edge and the workers carry on, the
  rollups equal `Analyzer`'s;
- the whole cluster down for 30 s (every node SIGKILLed, then restarted): the edge buffers, delivers
  everything afterwards and the rollups are still exact; an edge whose buffer cannot hold the outage
  counts what it lost, keeps running and exits 1.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from rstscope.kafka import local

from . import synth
from .harness import (
    READY,
    Run,
    check_synth_counts,
    counter_from_logs,
    end_offsets,
    records_on_topic,
    worker_bugs,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

CONNECTIONS = int(os.environ.get("RSTSCOPE_FAULT_CONNECTIONS", "1500"))
RATE = 400.0  # frames/s: ~18 s of stream, so the faults land in its middle
OUTAGE_S = float(os.environ.get("RSTSCOPE_OUTAGE_S", "30"))


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = synth.make(tmp_path_factory.mktemp("cap") / "faults.pcap", CONNECTIONS)
    check_synth_counts(path, CONNECTIONS)
    return path


def _sum_ends(run: Run) -> int:
    return sum(end_offsets(run.conf, run.topic("packets")).values())


def test_one_broker_killed_and_restarted(kafka_cluster3: Any, work: Path, capture: Path,
                                         figures: dict[str, Any]) -> None:
    run = Run(work, kafka_cluster3.bootstrap)
    run.create_topics()
    try:
        w1, w2 = run.start_worker(), run.start_worker()
        run.wait_log(w1, READY)
        run.wait_log(w2, READY)
        edge = run.edge(capture, rate=RATE)
        time.sleep(3)
        node = 1 + int.from_bytes(os.urandom(1), "big") % 3
        before = _sum_ends(run)
        t_kill = time.monotonic()
        kafka_cluster3.kill_node(node, signal.SIGKILL)
        time.sleep(10)
        assert edge.popen.poll() is None, "the stream ended before the broker came back: slow it down"
        kafka_cluster3.start_node(node, wait=True)
        back_s = time.monotonic() - t_kill
        rc, stats = run.edge_result(edge)
        assert rc == 0 and stats["delivery_failures"] == 0, run.logs()
        assert stats["sent"] + stats["watermarks"] == stats["delivered"]
        v = run.verdict(capture)
        figures.update(**v)  # a failing run still counts in the report
        assert v["rows_equal"] and v["lost"] == 0 and v["double_counted"] == 0, (v, run.logs())
        assert not worker_bugs(run), worker_bugs(run)
        assert v["ids_missing"] == 0 and v["ids_unexpected"] == 0, v
        run.wait_committed_at_end()
        assert w1.popen.poll() is None and w2.popen.poll() is None, "a worker died with the broker"
        figures.update(produced=stats["delivered"], **v, killed_node=node, node_down_s=round(back_s, 1),
                       packets_before_kill=before, worker_exits=0)
    finally:
        run.stop_all()


def _all_down(cluster: Any) -> None:
    for n in cluster.node_ids:
        cluster.kill_node(n, signal.SIGKILL)


def _all_up(cluster: Any) -> None:
    for n in cluster.node_ids:
        cluster.start_node(n, wait=False)
    local.wait_ready(cluster.dir, cluster.node_ids, timeout=120)


def test_cluster_down_30s_under_load(kafka_cluster3: Any, work: Path, capture: Path,
                                     figures: dict[str, Any]) -> None:
    """Three edges during one outage of the whole cluster:

    - A: default buffer (holds the outage): everything delivered afterwards; workers -> exact rollups;
    - B: a 500-message buffer and 8 s message timeout: records time out, are counted as delivery
      failures, the edge keeps reading to the end and exits 1; the topic holds exactly what it reports
      delivered;
    - C: a 500-record buffer (batches of 50) that may block the reader at most 0.5 s (`--max-wait`, the live-capture
      default): records that find it full are dropped and counted (``queue_full``), the edge keeps
      reading to the end and exits 3 (data lost at the edge).
    """
    a = Run(work / "a", kafka_cluster3.bootstrap)
    b = Run(work / "b", kafka_cluster3.bootstrap)
    c = Run(work / "c", kafka_cluster3.bootstrap)
    for r in (a, b, c):
        r.create_topics()
    restarted = 0
    try:
        w1 = a.start_worker()
        a.wait_log(w1, READY)
        ea = a.edge(capture, rate=RATE)
        eb = b.edge(capture, "-X", "queue.buffering.max.messages=500", "-X", "message.timeout.ms=8000", rate=RATE)
        ec = c.edge(capture, "--queue-max", "500", "--batch-records", "50", "--max-wait", "0.5", rate=RATE)
        # the outage must find all three edges streaming: an edge still starting (a loaded machine) would
        # wait for the brokers and then replay into a healthy cluster, and C would lose nothing (seen in CI)
        deadline = time.monotonic() + 60
        while min(_sum_ends(r) for r in (a, b, c)) == 0:
            assert time.monotonic() < deadline, "an edge delivered nothing in 60 s"
            time.sleep(0.2)
        time.sleep(2)
        before = _sum_ends(a)
        t_down = time.monotonic()
        _all_down(kafka_cluster3)
        time.sleep(OUTAGE_S)
        ended_during = {name: e.popen.poll() for name, e in (("a", ea), ("b", eb), ("c", ec))}
        _all_up(kafka_cluster3)
        down_s = time.monotonic() - t_down
        rc_a, sa = a.edge_result(ea)
        rc_b, sb = b.edge_result(eb)
        rc_c, sc = c.edge_result(ec)
        t_done = time.monotonic() - t_down
        # A: buffered, then delivered
        assert rc_a == 0 and sa["delivery_failures"] == 0 and sa["delivered"] == sa["sent"] + sa["watermarks"], \
            a.logs()
        buffered = sa["delivered"] - before
        assert buffered > 0
        if w1.popen.poll() is not None:  # a supervisor would restart it; count it as a finding
            restarted += 1
            a.start_worker()
        v = a.verdict(capture, timeout=240)
        figures.update(**v, duplicate_batches=sum(counter_from_logs(p.log.read_text(errors="replace"),
                                                                      "duplicate_batches")
                                                    for p in a.procs if p.name.startswith("worker")))
        assert v["rows_equal"] and v["lost"] == 0 and v["double_counted"] == 0, (v, a.logs())
        assert not worker_bugs(a), worker_bugs(a)
        assert v["ids_missing"] == 0 and v["ids_unexpected"] == 0, v
        a.wait_committed_at_end(120)
        # B: the losses are counted, the edge went on, the exit code says so, the topic agrees
        assert rc_b == 1, b.logs()
        assert sb["delivery_failures"] > 0 and sb["delivered"] + sb["delivery_failures"] == sb["sent"] \
            + sb["watermarks"], sb
        # what the edge reports delivered is on the topic; a record that timed out while in flight may
        # still have been written (the broker got it, the ack was lost): failures are an upper bound
        on_topic = records_on_topic(b.conf, b.topic("packets"))
        assert sb["delivered"] <= on_topic <= sb["sent"] + sb["watermarks"], (on_topic, sb)
        assert sb["read"] == sa["read"], "edge B stopped reading"
        assert "delivery failures" in b.tail(eb)
        # C: a full buffer drops and counts, keeps reading, and says so in its exit code
        assert rc_c == 3 and sc["dropped"].get("queue_full", 0) > 0, (rc_c, sc, c.logs())
        assert sc["read"] == sa["read"], "edge C stopped reading"
        on_topic_c = records_on_topic(c.conf, c.topic("packets"))
        assert sc["delivered"] <= on_topic_c, (on_topic_c, sc)
        figures.update(produced=sa["delivered"], **v, outage_s=round(down_s, 1), buffered_during_outage=buffered,
                       worker_restarts=restarted, b_sent=sb["sent"] + sb["watermarks"], b_delivered=sb["delivered"],
                       b_failures=sb["delivery_failures"], b_errors=sb.get("errors"), b_exit=rc_b,
                       b_on_topic=on_topic, b_failed_but_written=on_topic - sb["delivered"],
                       c_exit=rc_c, c_dropped_queue_full=sc["dropped"].get("queue_full", 0),
                       c_delivered=sc["delivered"], c_on_topic=on_topic_c, c_done_s=round(t_done, 1),
                       ended_during_outage=ended_during)
    finally:
        for r in (a, b, c):
            r.stop_all()
