"""`rstscope alert-agent`: the rollups topic -> change alerts -> the alerts topic (docs/insights.md).

A network's rows are spread over every rollups partition (the row key holds the bucket), and its
baseline spans days of them, so one agent reads ALL partitions; rows are few (one per network and
15-minute bucket), so one process keeps up with many workers.

Its state is the rollups topic itself. That topic is compacted and keyed by row, so reading it from the
beginning yields the latest version of every row. The agent therefore commits no offsets: each start
reads the topic from the beginning, rebuilds the detector and sends the alerts it finds again. Alerts
are upserts keyed by their id on a compacted topic, so a restart, or a second agent run for
availability, changes nothing a reader sees.

When a unit is judged (``Pacer``): rollup rows of a bucket come from every partition's rollup agent,
each when its own windows close. A unit is judged once rows of a bucket at least one bucket past its
end have been seen, and those rows have been seen for ``settle_s`` seconds (so a partition a moment
behind the others still lands in time). When no new row has come for ``flush_idle_s``, every complete
unit is judged (the end of a replay, a quiet night). A row that arrives for a unit already judged is
counted as late (``late_rows``), never applied silently.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from rstscope import config
from rstscope.core.rollup import BUCKET_S
from rstscope.insights.alerts import AlertDetector
from rstscope.insights.model import Alert
from rstscope.kafka.roles import default_bootstrap, role_spec

log = logging.getLogger("rstscope.alert_agent")


@dataclass
class AgentStats:
    """What the agent did (the summary line): every row it could not use is counted here or in the detector."""

    messages: int = 0
    rows: int = 0
    tombstones: int = 0
    bad_messages: int = 0
    alerts_sent: int = 0
    judged_until: int = 0


class Pacer:
    """Decides up to which time units may be judged, from the buckets seen and the wall clock (pure)."""

    def __init__(self, bucket_s: int, settle_s: float, flush_idle_s: float) -> None:
        self.bucket_s, self.settle_s, self.flush_idle_s = bucket_s, settle_s, flush_idle_s
        self.newest = -1  # newest bucket start seen
        self.first_seen: dict[int, float] = {}  # bucket start -> wall time its first row came
        self.last_row_at: float | None = None

    def saw(self, bucket_start: int, now: float) -> None:
        self.last_row_at = now
        if bucket_start not in self.first_seen:
            self.first_seen[bucket_start] = now
            self.newest = max(self.newest, bucket_start)

    def until(self, now: float) -> int | None:
        """Units ending at or before the returned time may be judged (None: none yet)."""
        if self.last_row_at is None:
            return None
        if now - self.last_row_at >= self.flush_idle_s:
            return self.newest + self.bucket_s  # quiet: every bucket seen is complete
        settled = [b for b, t in self.first_seen.items() if now - t >= self.settle_s]
        if not settled:
            return None
        horizon = max(settled) - self.bucket_s  # a bucket past the unit's end has settled
        for b in [b for b in self.first_seen if b < horizon - 2 * self.bucket_s]:
            del self.first_seen[b]  # bounded: only recent buckets matter
        return horizon


class AlertAgent:
    """Rows in, alerts out: the detector fed and advanced as the Pacer allows (pure over ``now``)."""

    def __init__(self, detector: AlertDetector, pacer: Pacer) -> None:
        self.detector, self.pacer = detector, pacer
        self.stats = AgentStats()

    def feed(self, rows: Iterable[Mapping[str, Any]], now: float) -> None:
        for row in rows:
            self.stats.rows += 1
            self.detector.add_row(row)
            with contextlib.suppress(KeyError, TypeError, ValueError):  # the detector counted a bad row
                self.pacer.saw(int(row["bucket_start"]), now)

    def due(self, now: float) -> list[Alert]:
        until = self.pacer.until(now)
        if until is None or until <= self.stats.judged_until:
            return []
        self.stats.judged_until = until
        return self.detector.advance(until)


def decode(value: bytes | None, stats: AgentStats) -> dict[str, Any] | None:
    """A rollup row from a message value; None for a tombstone or a bad message (counted)."""
    stats.messages += 1
    if value is None:
        stats.tombstones += 1
        return None
    try:
        row = orjson.loads(value)
    except orjson.JSONDecodeError:
        row = None
    if not isinstance(row, dict):
        stats.bad_messages += 1
        return None
    return row


def run(bootstrap: str, topo: config.Topology, *, stop: threading.Event, settle_s: float = 5.0,
        flush_idle_s: float = 300.0, report: Callable[[AgentStats, dict[str, int]], None] | None = None,
        report_every_s: float = 30.0) -> AgentStats:
    """Read the rollups topic from the beginning and follow it, sending alerts until ``stop`` is set."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    from rstscope.kafka import security

    rollups, alerts_topic = role_spec(topo, "rollups"), role_spec(topo, "alerts")
    conf = {**security.load().librdkafka(), "bootstrap.servers": bootstrap}
    consumer = Consumer({**conf, "group.id": f"rstscope-alert-agent-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    producer = Producer({**conf, "linger.ms": 20, "enable.idempotence": True})
    consumer.assign([TopicPartition(rollups.name, p, OFFSET_BEGINNING) for p in range(rollups.partitions)])
    agent = AlertAgent(AlertDetector(topo.alerts, BUCKET_S), Pacer(BUCKET_S, settle_s, flush_idle_s))
    last_report = time.monotonic()
    try:
        while not stop.is_set():
            msgs = consumer.consume(num_messages=1000, timeout=0.5)
            now = time.monotonic()
            rows = []
            for m in msgs:
                if m.error() is not None:
                    log.warning("consumer error: %s", m.error())
                    continue
                row = decode(m.value(), agent.stats)
                if row is not None:
                    rows.append(row)
            agent.feed(rows, now)
            sent = agent.due(now)
            for a in sent:
                producer.produce(alerts_topic.name, key=a.id.encode(), value=orjson.dumps(a.to_wire()))
                producer.poll(0)
            if sent:
                agent.stats.alerts_sent += len(sent)
                if producer.flush(30) != 0:
                    raise RuntimeError("alerts were not delivered within 30 s")
            if report is not None and now - last_report >= report_every_s:
                report(agent.stats, dict(agent.detector.stats))
                last_report = now
    finally:
        consumer.close()
        producer.flush(30)
    if report is not None:
        report(agent.stats, dict(agent.detector.stats))
    return agent.stats


def summary_line(stats: AgentStats, detector: Mapping[str, int]) -> str:
    det = {"late_rows": 0, "bad_rows": 0, **detector}  # always shown: what was not applied
    det.pop("rows", None)  # the agent's own count says it
    parts = [f"{k} {v}" for k, v in vars(stats).items()] + [f"{k} {v}" for k, v in sorted(det.items())]
    return "alert-agent: " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rstscope alert-agent", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS)")
    ap.add_argument("--topology", type=Path, default=None)
    ap.add_argument("--settle-s", type=float, default=5.0,
                    help="seconds a bucket's first rows wait before the unit before it is judged (default 5)")
    ap.add_argument("--flush-idle-s", type=float, default=300.0,
                    help="no new rollup row for this long: judge every complete unit (default 300)")
    ap.add_argument("--report-every-s", type=float, default=30.0, help="summary line period (default 30)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        topo = config.load(args.topology)
    except config.TopologyError as e:
        print(f"rstscope: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run(args.bootstrap or default_bootstrap(), topo, stop=stop, settle_s=args.settle_s,
        flush_idle_s=args.flush_idle_s, report=lambda s, d: print(summary_line(s, d), file=sys.stderr, flush=True),
        report_every_s=args.report_every_s)
    return 0
