"""The worker's Prometheus collector (rstscope/streams/metrics.py) on real stages fed real messages.

`ConnectionStage` gets msgpack packets and watermarks (rstscope.codecs.packet) on two partitions,
`RollupStage` the records it emitted (twice: the second time they are duplicates). The exposition is
parsed back with prometheus_client's own parser and every value is checked against the stages' state:
each counter key the stages hold is exported (a named metric or the catch-all), the per-partition
gauges equal the tables and queues, and nothing is counted twice when a partition is revoked.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rstscope import config
from rstscope.codecs.jsonl import dumps
from rstscope.codecs.packet import Watermark, encode_packet, encode_watermark
from rstscope.core.table import EXCLUSIONS
from rstscope.streams.connection_agent import ConnectionStage
from rstscope.streams.metrics import (
    CONTENT_TYPE,
    METRICS,
    MetricsServer,
    StageCollector,
    bind,
    make_registry,
    partition_status,
    route,
)
from rstscope.streams.offsets import OffsetGuard
from rstscope.streams.rollup_agent import RollupStage
from rstscope.streams.status import EdgeStatus
from tests.builders import T0, ack, psh, rst, syn

NOW = T0 + 5000.0  # the collector's wall clock (lag = NOW - watermark)
EDGE = "edge-a"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(collector: StageCollector) -> Samples:
    """The collector's exposition, parsed by prometheus_client: (sample name, sorted labels) -> value."""
    text = generate_latest(make_registry(collector)).decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def label_dict(metric: str, values: Iterable[str]) -> dict[str, str]:
    return dict(zip(METRICS[metric][1], values, strict=True))


class Fed:
    """Real stages after real input: what each was fed and what came out."""

    def __init__(self) -> None:
        self.topo = config.load()
        self.conn = ConnectionStage(self.topo, warmup_s=0)
        self.rollup = RollupStage(self.topo.window.size_s)
        self.records_table: dict[str, bytes] = {}
        self.packets = 0
        self.records: list[dict[str, Any]] = []
        self.upserts = 0
        self.handle = 0
        self.batches: list[tuple[int, bytes]] = []  # (rollup partition, rollup-input message)

    def send(self, partition: int, message: bytes) -> None:
        self.handle += 1
        recs, _errors = self.conn.feed(partition, message, self.handle)
        self.records += recs
        if recs:
            batch = b"[" + b",".join(dumps(r) for r in recs) + b"]"
            self.batches.append((partition % 2, batch))
            self.rollup.add_batch(partition % 2, batch, self.records_table, len(self.batches))

    def packet(self, partition: int, p: Any) -> None:
        self.packets += 1
        self.send(partition, encode_packet(p, edge=EDGE))

    def watermark(self, partition: int, ts: float) -> None:
        self.send(partition, encode_watermark(Watermark(ts, EDGE, False)))


@pytest.fixture
def fed() -> Fed:
    f = Fed()
    # partition 0: a reset connection (decided once event time passes it by grace_s), one held open,
    # one with two SYNs (multi_syn once it ends), and a packet of no connection (no_syn)
    for i, p in enumerate([syn(sport=40001), ack(sport=40001), psh(sport=40001), rst(sport=40001, seq=1101)]):
        f.packet(0, p._replace(ts=T0 + i * 0.01))
    for i, p in enumerate([syn(sport=40002), ack(sport=40002)]):
        f.packet(0, p._replace(ts=T0 + 1 + i * 0.01))
    for i, p in enumerate([syn(sport=40003), syn(sport=40003), rst(sport=40003)]):
        f.packet(0, p._replace(ts=T0 + 2 + i * 0.01))
    f.packet(0, ack(sport=40004, ts=T0 + 3))
    f.watermark(0, T0 + 60)
    # partition 1: a connection whose window closes (the watermark crosses into the next window), then a
    # packet of the closed window (late)
    f.packet(1, syn(sport=41001, ts=T0))
    f.watermark(1, T0 + 1000)
    f.packet(1, ack(sport=41002, ts=T0 + 1))
    f.send(1, b"\xc1 not msgpack")  # a dead letter
    # every record once more (a replay: each on its bucket's partition): the rollup recognises them by id
    for i, (partition, batch) in enumerate(list(f.batches)):
        f.rollup.add_batch(partition, batch, f.records_table, 100 + i)
    f.upserts = len(f.rollup.take_dirty())
    return f


def test_counters_are_the_stages_counters(fed: Fed) -> None:
    c, r = fed.conn, fed.rollup
    s = scrape(StageCollector(c, r, clock=lambda: NOW))
    assert value(s, "rstscope_packets_in_total") == fed.packets == c.counters["packets"]
    assert value(s, "rstscope_watermarks_in_total") == 2
    assert value(s, "rstscope_connections_emitted_total") == len(fed.records) == c.counters["records"] > 0
    assert value(s, "rstscope_dead_letters_total", stage="connections", reason="malformed_record") == 1
    assert value(s, "rstscope_rollup_records_counted_total") == len(fed.records) == r.counters["counted"]
    assert value(s, "rstscope_rollup_duplicates_total") == len(fed.records) == r.counters["duplicates"]
    assert value(s, "rstscope_rollup_rows_emitted_total") == fed.upserts == r.counters["upserts"] > 0
    assert value(s, "rstscope_connections_excluded_total", reason="multi_syn") == c.counters["excluded:multi_syn"] == 1
    # every key either stage counts is a sample with its value (the table's live counters add to table:*)
    for stage, counters in (("connections", c.counters), ("rollup", r.counters)):
        for key, n in counters.items():
            where = route(stage, key)
            assert where is not None, key
            if where[0] != "rstscope_table_packets_total":
                assert value(s, where[0], **label_dict(where[0], where[1])) == n, key
    live: Counter[str] = Counter()
    for st in c.parts.values():
        live.update({k: v for k, v in st.table.counters.items() if k not in EXCLUSIONS})
    assert live["no_syn"] == 1 and live["late"] == 1, live
    for reason, n in live.items():
        assert value(s, "rstscope_table_packets_total", reason=reason) == n + c.counters[f"table:{reason}"]
    assert not [k for k in s if k[0] == "rstscope_stage_events_total"]  # every key the stages count has a name


def test_partition_gauges_are_the_tables(fed: Fed) -> None:
    s = scrape(StageCollector(fed.conn, fed.rollup, lambda: {"connections": 2, "rollup": 1}, clock=lambda: NOW))
    assert sorted(fed.conn.parts) == [0, 1]
    for p, st in fed.conn.parts.items():
        part = str(p)
        assert value(s, "rstscope_connections_open", partition=part) == len(st.table.open)
        assert value(s, "rstscope_messages_unacked", partition=part) == len(st.queue)
        assert value(s, "rstscope_windows_open", partition=part) == len(st.pinned)
        assert value(s, "rstscope_watermark_seconds", partition=part) == st.table.watermark
        assert value(s, "rstscope_watermark_lag_seconds", partition=part) == NOW - st.table.watermark
    assert value(s, "rstscope_connections_open", partition="0") == 1  # sport 40002: no RST, no FIN yet
    assert value(s, "rstscope_messages_unacked", partition="0") == len(fed.conn.parts[0].queue) > 0
    assert value(s, "rstscope_watermark_seconds", partition="1") == T0 + 1000
    assert value(s, "rstscope_partitions_owned", stage="connections") == 2
    assert value(s, "rstscope_partitions_owned", stage="rollup") == 1


def test_edge_series_come_from_edge_status(fed: Fed) -> None:
    s = scrape(StageCollector(fed.conn, fed.rollup, clock=lambda: NOW))
    statuses = list(fed.conn.edge_status()) if hasattr(fed.conn, "edge_status") else []
    for e in statuses:
        labels = {"partition": str(e.partition), "edge": e.edge}
        assert value(s, "rstscope_edge_idle", **labels) == float(e.idle)
        assert value(s, "rstscope_edge_watermark_seconds", **labels) == e.watermark
    if statuses:
        assert value(s, "rstscope_edge_late_packets_total", edge=EDGE) == sum(e.late for e in statuses) == 1

    class Stage(ConnectionStage):
        def edge_status(self) -> list[EdgeStatus]:
            return [EdgeStatus(0, "a", T0, False, False, 2), EdgeStatus(1, "a", T0 - 5, False, True, 3),
                    EdgeStatus(0, "b", float("-inf"), True, False, 0), EdgeStatus(1, "b", T0, False, True, 1)]

    s = scrape(StageCollector(Stage(fed.topo), fed.rollup, clock=lambda: NOW))
    assert value(s, "rstscope_edge_watermark_seconds", partition="1", edge="a") == T0 - 5
    assert value(s, "rstscope_edge_watermark_seconds", partition="0", edge="b") is None  # no event time yet
    assert value(s, "rstscope_edge_eof", partition="0", edge="b") == 1
    assert value(s, "rstscope_edge_idle", partition="1", edge="a") == 1
    assert value(s, "rstscope_edge_late_packets_total", edge="a") == 5
    assert value(s, "rstscope_edges_idle") == 2
    # a stage without edge_status (before per-edge state existed): no edge series, nothing fails
    bare = SimpleNamespace(counters=Counter({"packets": 3}), parts={})
    s = scrape(StageCollector(bare, fed.rollup, clock=lambda: NOW))  # type: ignore[arg-type]
    assert value(s, "rstscope_packets_in_total") == 3
    assert not [k for k in s if k[0].startswith("rstscope_edge_") or k[0] == "rstscope_edges_idle"]


def test_revoke_keeps_counters_monotonic(fed: Fed) -> None:
    before = scrape(StageCollector(fed.conn, fed.rollup, clock=lambda: NOW))
    fed.conn.revoke([0, 1])
    assert fed.conn.counters["table:multi_syn"] == 1  # the revoked tables' counters moved to the stage
    after = scrape(StageCollector(fed.conn, fed.rollup, clock=lambda: NOW))
    for (name, labels), v in before.items():
        if name.startswith("rstscope_") and METRICS.get(name, ("",))[0] == "counter" \
                and not name.startswith("rstscope_edge_"):
            assert after[(name, labels)] >= v, name
    assert value(after, "rstscope_table_packets_total", reason="late") == 1
    assert value(after, "rstscope_table_packets_total", reason="no_syn") == 1
    assert value(after, "rstscope_connections_open", partition="0") is None
    assert value(after, "rstscope_connections_revoked_open_total") == fed.conn.counters["revoked_open"] == 1
    # the revoked tables' exclusions are the excluded:* counts already: not exported twice
    assert value(after, "rstscope_connections_excluded_total", reason="multi_syn") == 1
    assert value(after, "rstscope_table_packets_total", reason="multi_syn") is None


def test_every_key_is_exported() -> None:
    counters: Counter[str] = Counter()
    guard = OffsetGuard(None, counters, "rollup", "topic", lambda _t, _p: (0, 0))
    for what in ("stale", "unassigned", "behind", "gap", "seek", "stall", "new_kind"):
        guard._count(what)  # the keys exactly as the guard writes them
    counters["timer_error:rollup-flush"] += 2
    counters["dead:malformed_record"] += 3
    counters["something_new"] += 4
    conn = SimpleNamespace(counters=Counter({"table:no_syn": 5, "table:multi_syn": 6, "excluded:multi_syn": 6}),
                           parts={})
    rollup = SimpleNamespace(counters=counters)
    s = scrape(StageCollector(conn, rollup, clock=lambda: NOW))  # type: ignore[arg-type]
    assert value(s, "rstscope_offset_guard_skipped_total", stage="rollup", reason="gap") == 1
    assert value(s, "rstscope_offset_guard_skipped_total", stage="rollup", reason="stale") == 1
    assert value(s, "rstscope_offset_guard_seeks_total", stage="rollup") == 1
    assert value(s, "rstscope_offset_guard_stalls_total", stage="rollup") == 1
    assert value(s, "rstscope_timer_errors_total", timer="rollup-flush") == 2
    assert value(s, "rstscope_dead_letters_total", stage="rollup", reason="malformed_record") == 3
    assert value(s, "rstscope_stage_events_total", stage="rollup", event="something_new") == 4
    assert value(s, "rstscope_stage_events_total", stage="rollup", event="offset_new_kind:rollup") == 1
    assert value(s, "rstscope_table_packets_total", reason="no_syn") == 5
    assert value(s, "rstscope_connections_excluded_total", reason="multi_syn") == 6
    assert value(s, "rstscope_table_packets_total", reason="multi_syn") is None


def test_families_have_help_and_names() -> None:
    for name, (kind, labels, doc) in METRICS.items():
        assert name.startswith("rstscope_") and doc and kind in ("counter", "gauge")
        assert name.endswith("_total") == (kind == "counter"), name
        assert "partition" not in labels or kind == "gauge", name  # partition series vanish on revoke
    text = generate_latest(make_registry(StageCollector(SimpleNamespace(counters=Counter(), parts={}),  # type: ignore[arg-type]
                                                        SimpleNamespace(counters=Counter())))).decode()  # type: ignore[arg-type]
    for name, (kind, _labels, _doc) in METRICS.items():
        assert f"# HELP {name} " in text and f"# TYPE {name} {kind}" in text, name


def test_docs_list_every_metric() -> None:
    """docs/metrics.md has one table row per metric, with its type and labels."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`rstscope_"):
            rows[cells[0].strip("`")] = (cells[1], () if cells[2] == "—" else tuple(cells[2].split(", ")))
    assert rows == {name: (kind, labels) for name, (kind, labels, _doc) in METRICS.items()}


def test_partition_status_prefers_the_stage() -> None:
    from rstscope.streams.status import PartitionStatus

    ps = PartitionStatus(3, 1, 2, 1, T0, {"late": 4})
    stage = SimpleNamespace(partition_status=lambda: [ps], parts={})
    assert partition_status(stage) == [ps]


async def test_endpoint_serves_text_format_0_0_4(fed: Fed) -> None:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = MetricsServer(make_registry(StageCollector(fed.conn, fed.rollup)), sock)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            # whatever Prometheus asks for, the answer is the 0.0.4 text format
            accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            async with http.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept}) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
                text = await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/other") as resp:
                assert resp.status == 404
    finally:
        await server.stop()
    assert f"rstscope_packets_in_total {float(fed.packets)}" in text
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # stopped: the port is closed


def test_bind_refuses_a_taken_port() -> None:
    """The worker binds before Faust starts, so a taken port is an error at once (exit 2), not a crash later."""
    first = bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            bind("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


def test_a_rebuilt_rollup_has_the_same_rows_names_included(fed: Fed) -> None:
    """A worker that takes a partition over rebuilds its rows from the table: the same counts and AS names."""
    from rstscope.streams.rollup_agent import RollupStage

    recs = [dict(r, as_name=f"AS-NAME-{i}", asn=64500 + i % 2) for i, r in enumerate(fed.records)]
    first = RollupStage(900)
    table: dict[str, bytes] = {}
    first.add_batch(0, b"[" + b",".join(dumps(r) for r in recs) + b"]", table, 1)
    again = RollupStage(900)
    again.rollup(0, table)
    assert list(again.rows()) == list(first.rows())
    assert any(row.get("name", "").startswith("AS-NAME-") for row in again.rows())
