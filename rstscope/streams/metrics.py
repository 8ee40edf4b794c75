"""Prometheus metrics of a worker (`rstscope worker --metrics-port`), read from its stages at scrape time.

A custom collector, not prometheus_client counters: the agents already count everything in their
plain ``counters`` and the tables hold what the gauges show, so a scrape copies them and the
per-message path never touches the metrics library (no double bookkeeping, nothing to drift).
Every stage counter key is exported: known keys by a named metric (`route`), any other by the
catch-all ``rstscope_stage_events_total{stage,event}``, so a counter added later is never invisible.

Served by an aiohttp handler on the worker's own event loop rather than prometheus_client's HTTP
thread: the collector then reads the stages' dicts on the thread that mutates them, so a scrape sees
a consistent state and never races an agent (no locks); a blocked loop shows as a failed scrape.
docs/metrics.md lists every metric.
"""

from __future__ import annotations

import math
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from mode import Service
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from rstscope.core.table import EXCLUSIONS
from rstscope.streams.status import EdgeStatus, PartitionStatus

if TYPE_CHECKING:
    from rstscope.streams.connection_agent import ConnectionStage
    from rstscope.streams.rollup_agent import RollupStage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the Prometheus text format this endpoint serves
CONNECTIONS, ROLLUP = "connections", "rollup"  # stage label values (also the OffsetGuard names)

# name -> (type, labels, help). The one list of what a worker exports: docs/metrics.md follows it.
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "rstscope_packets_in_total": (
        "counter", (), "Packet records the connection stage processed (in offset order, decoded)."),
    "rstscope_watermarks_in_total": (
        "counter", (), "Edge watermark records the connection stage processed."),
    "rstscope_connections_emitted_total": (
        "counter", (), "Classified connection records sent to the connections topic and the rollup input."),
    "rstscope_connections_excluded_total": (
        "counter", ("reason",), "Connections decided but not classified, by reason (multi_syn, incomplete)."),
    "rstscope_connections_failed_total": (
        "counter", (), "Finished connections whose record could not be built (a bug: logged with the connection)."),
    "rstscope_inputs_ended_total": (
        "counter", (), "Times a partition's input ended (every edge sent end-of-input or went idle): the "
                       "table was closed at the cutoff."),
    "rstscope_edges_idled_total": (
        "counter", (), "Times an edge went idle on a partition (silent for edges.idle_s of wall clock)."),
    "rstscope_duplicate_batches_total": (
        "counter", (), "Packet batches dropped because this partition already took them from their edge (the "
                       "transport wrote them twice); their packets were not counted again."),
    "rstscope_batches_missing_total": (
        "counter", (), "Packet batches an edge numbered that never arrived before a later one (lost in "
                       "delivery; the edge's own summary says why)."),
    "rstscope_connections_revoked_open_total": (
        "counter", (), "Open connections dropped when their partition was revoked (the new owner replays them)."),
    "rstscope_table_packets_total": (
        "counter", ("reason",),
        "Packets the connection tables took without using them, by rule counter (no_syn, after_close, "
        "beyond_max_packets, after_idle, late)."),
    "rstscope_dead_letters_total": (
        "counter", ("stage", "reason"), "Input messages sent to the dead-letter topic, by stage and reason."),
    "rstscope_rollup_records_counted_total": (
        "counter", (), "Connection records counted into the rollups (first time their id was seen)."),
    "rstscope_rollup_duplicates_total": (
        "counter", (), "Connection records the rollup stage had counted already (replays), not counted again."),
    "rstscope_rollup_rows_emitted_total": (
        "counter", (), "Rollup row upserts sent to the rollups topic."),
    "rstscope_rollup_rebuilds_total": (
        "counter", (), "Per-partition rollups rebuilt from the records table (after an assignment or a restart)."),
    "rstscope_offset_guard_skipped_total": (
        "counter", ("stage", "reason"),
        "Messages the offset guard refused: stale (older generation), unassigned, behind (delivered twice), "
        "gap (offsets skipped by the transport)."),
    "rstscope_offset_guard_seeks_total": (
        "counter", ("stage",), "Seeks back to the expected offset by the offset guard (repairs of gaps and stalls)."),
    "rstscope_offset_guard_stalls_total": (
        "counter", ("stage",), "Partitions the offset guard found stalled (log ahead, nothing delivered) and sought."),
    "rstscope_timer_errors_total": (
        "counter", ("timer",), "Periodic tasks (flushes, offset reseeks) that raised; retried at their next tick."),
    "rstscope_stage_events_total": (
        "counter", ("stage", "event"), "Stage counters without a metric of their own (so nothing counted is hidden)."),
    "rstscope_partitions_owned": (
        "gauge", ("stage",), "Input partitions assigned to this worker (connections: packets topic, rollup: "
                             "rollup input)."),
    "rstscope_connections_open": (
        "gauge", ("partition",), "Connections open in the partition's table (their packets held unacked)."),
    "rstscope_messages_unacked": (
        "gauge", ("partition",), "Packets-topic messages consumed but not acked yet (held for open connections "
                                 "and open windows)."),
    "rstscope_windows_open": (
        "gauge", ("partition",), "Event-time windows still open in the partition (their first openers pinned)."),
    "rstscope_watermark_seconds": (
        "gauge", ("partition",), "The partition's event time (what its edges' watermarks allow), seconds since "
                                 "the epoch."),
    "rstscope_watermark_lag_seconds": (
        "gauge", ("partition",), "Wall clock now minus the partition's event time."),
    "rstscope_edge_watermark_seconds": (
        "gauge", ("partition", "edge"), "An edge's latest event time on a partition, seconds since the epoch."),
    "rstscope_edge_idle": (
        "gauge", ("partition", "edge"), "1 if the edge is idle on the partition (its event time does not advance)."),
    "rstscope_edge_eof": (
        "gauge", ("partition", "edge"), "1 if the edge sent its end-of-input watermark to the partition."),
    "rstscope_edge_late_packets_total": (
        "counter", ("edge",), "An edge's packets counted late (window closed), summed over this worker's partitions."),
    "rstscope_edges_idle": (
        "gauge", (), "Edges idle on at least one partition of this worker."),
}

_PLAIN = {
    CONNECTIONS: {"packets": "rstscope_packets_in_total", "watermarks": "rstscope_watermarks_in_total",
                  "records": "rstscope_connections_emitted_total",
                  "records_failed": "rstscope_connections_failed_total",
                  "revoked_open": "rstscope_connections_revoked_open_total",
                  "inputs_ended": "rstscope_inputs_ended_total", "edges_idle": "rstscope_edges_idled_total",
                  "duplicate_batches": "rstscope_duplicate_batches_total",
                  "batches_missing": "rstscope_batches_missing_total"},
    ROLLUP: {"counted": "rstscope_rollup_records_counted_total", "duplicates": "rstscope_rollup_duplicates_total",
             "upserts": "rstscope_rollup_rows_emitted_total", "rebuilds": "rstscope_rollup_rebuilds_total"},
}
_GUARD_SKIPS = frozenset({"stale", "unassigned", "behind", "gap"})

Route = tuple[str, tuple[str, ...]]  # (metric name, label values)


def route(stage: str, key: str) -> Route | None:
    """The metric a stage counter key is exported as. None only for ``table:multi_syn``-like keys (a
    revoked table's exclusions): the same connections are in ``excluded:*`` already."""
    name = _PLAIN.get(stage, {}).get(key)
    if name is not None:
        return name, ()
    kind, sep, arg = key.partition(":")
    if sep and arg:
        if kind == "excluded" and stage == CONNECTIONS:
            return "rstscope_connections_excluded_total", (arg,)
        if kind == "table" and stage == CONNECTIONS:
            return None if arg in EXCLUSIONS else ("rstscope_table_packets_total", (arg,))
        if kind == "dead":
            return "rstscope_dead_letters_total", (stage, arg)
        if kind == "timer_error":
            return "rstscope_timer_errors_total", (arg,)
        what = kind.removeprefix("offset_")
        if what != kind:  # OffsetGuard keys: offset_<what>:<guard name>
            if what in _GUARD_SKIPS:
                return "rstscope_offset_guard_skipped_total", (arg, what)
            if what in ("seek", "stall"):
                return f"rstscope_offset_guard_{what}s_total", (arg,)
    return "rstscope_stage_events_total", (stage, key)


class StageCollector(Collector):
    """Reads a worker's two stages (and which partitions it owns) at each scrape."""

    def __init__(self, connections: ConnectionStage, rollups: RollupStage,
                 owned: Callable[[], Mapping[str, int]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.connections = connections
        self.rollups = rollups
        self.owned = owned
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing is read at registration; names are unique by construction (METRICS)

    def collect(self) -> Iterable[Metric]:
        c = self.connections
        sums: dict[str, Counter[tuple[str, ...]]] = {name: Counter() for name in METRICS}
        for stage, counters in ((CONNECTIONS, c.counters), (ROLLUP, self.rollups.counters)):
            for key, v in counters.items():
                r = route(stage, key)
                if r is not None:
                    sums[r[0]][r[1]] += v
        gauges: dict[str, list[tuple[tuple[str, ...], float]]] = {name: [] for name in METRICS}
        now = self.clock()
        for ps in sorted(partition_status(c), key=lambda ps: ps.partition):
            label = (str(ps.partition),)
            for reason, v in ps.table_counters.items():  # live tables (revoked ones are in table:*)
                if reason not in EXCLUSIONS:
                    sums["rstscope_table_packets_total"][(reason,)] += v
            for name, n in (("rstscope_connections_open", ps.connections_open),
                            ("rstscope_messages_unacked", ps.messages_unacked),
                            ("rstscope_windows_open", ps.windows_open)):
                if n is not None:
                    gauges[name].append((label, n))
            if math.isfinite(ps.watermark):  # -inf until the partition saw its first packet or watermark
                gauges["rstscope_watermark_seconds"].append((label, ps.watermark))
                gauges["rstscope_watermark_lag_seconds"].append((label, now - ps.watermark))
        if self.owned is not None:
            for stage, n in sorted(self.owned().items()):
                gauges["rstscope_partitions_owned"].append(((stage,), n))
        self._edges(sums, gauges)
        yield from _families(sums, gauges)

    def _edges(self, sums: dict[str, Counter[tuple[str, ...]]],
               gauges: dict[str, list[tuple[tuple[str, ...], float]]]) -> None:
        edge_status: Callable[[], Iterable[EdgeStatus]] | None = getattr(self.connections, "edge_status", None)
        if edge_status is None:  # a stage without per-edge state: no per-edge series
            return
        idle: set[str] = set()
        for s in sorted(edge_status()):
            labels = (str(s.partition), s.edge)
            if math.isfinite(s.watermark):
                gauges["rstscope_edge_watermark_seconds"].append((labels, s.watermark))
            gauges["rstscope_edge_idle"].append((labels, float(s.idle)))
            gauges["rstscope_edge_eof"].append((labels, float(s.eof)))
            sums["rstscope_edge_late_packets_total"][(s.edge,)] += s.late
            if s.idle:
                idle.add(s.edge)
        gauges["rstscope_edges_idle"].append(((), len(idle)))


def partition_status(stage: Any) -> list[PartitionStatus]:
    """The stage's own ``partition_status()`` if it has one, else read from ``ConnectionStage.parts``
    (the one place that knows those internals; a gauge whose source is gone is left out, not faked)."""
    own: Callable[[], Iterable[PartitionStatus]] | None = getattr(stage, "partition_status", None)
    if own is not None:
        return list(own())

    def size(obj: Any, attr: str) -> int | None:
        v = getattr(obj, attr, None)
        return None if v is None else len(v)

    out = []
    for p, st in list(getattr(stage, "parts", {}).items()):
        table = getattr(st, "table", None)
        out.append(PartitionStatus(p, size(table, "open"), size(st, "queue"), size(st, "pinned"),
                                   float(getattr(table, "watermark", float("-inf"))),
                                   dict(getattr(table, "counters", {}))))
    return out


def _families(sums: Mapping[str, Counter[tuple[str, ...]]],
              gauges: Mapping[str, list[tuple[tuple[str, ...], float]]]) -> Iterator[Metric]:
    """Every metric of METRICS, in its order, with HELP and TYPE even when it has no sample yet."""
    for name, (kind, labels, doc) in METRICS.items():
        fam: CounterMetricFamily | GaugeMetricFamily
        if kind == "counter":
            fam = CounterMetricFamily(name, doc, labels=labels)  # the family name drops "_total"
            for values, v in sorted(sums[name].items()):
                fam.add_metric(values, v)
            if not labels and not sums[name]:
                fam.add_metric([], 0)  # a plain counter exists from the start: rate() and alerts work at once
        else:
            fam = GaugeMetricFamily(name, doc, labels=labels)
            for values, g in gauges[name]:
                fam.add_metric(values, g)
        yield fam


def make_registry(collector: Collector) -> CollectorRegistry:
    """The worker's registry: its stages plus the standard process_* (memory, CPU, fds) and python_* series."""
    registry = CollectorRegistry(auto_describe=False)
    for c in (collector, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(c)
    return registry


def owned_partitions(app: Any, topics: Mapping[str, str]) -> Callable[[], dict[str, int]]:
    """stage -> number of partitions of its input topic (``topics``: stage -> topic name) assigned to
    the Faust app's consumer now."""
    stage_of = {t: s for s, t in topics.items()}

    def owned() -> dict[str, int]:
        counts = dict.fromkeys(topics, 0)
        try:
            assigned = app.consumer.assignment()
        except Exception:  # ConsumerNotStarted: the worker has not joined the group yet
            return counts
        for tp in assigned:
            stage = stage_of.get(tp.topic)
            if stage is not None:
                counts[stage] += 1
        return counts

    return owned


def web_app(registry: CollectorRegistry) -> web.Application:
    """GET /metrics: the registry in the Prometheus text format 0.0.4 (whatever the Accept header)."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def bind(host: str, port: int) -> socket.socket:
    """The endpoint's listening socket, bound before Faust starts: a taken port or a bad address stops
    the worker at once with a clear error (port 0: any free port, read it from ``getsockname``)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=128)
    sock.setblocking(False)
    return sock


class MetricsServer(Service):
    """Serves ``web_app`` on a bound socket; a service of the Faust worker (``Worker(app, server)``), so
    it runs on the worker's loop and stops with it."""

    def __init__(self, registry: CollectorRegistry, sock: socket.socket, **kwargs: Any) -> None:
        self.registry = registry
        self.sock = sock
        self._runner: web.AppRunner | None = None
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        runner = web.AppRunner(web_app(self.registry), access_log=None)
        await runner.setup()
        await web.SockSite(runner, self.sock).start()
        self._runner = runner

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
