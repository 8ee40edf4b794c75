"""`rstscope worker --metrics-port` on a real broker: /metrics, scraped over HTTP, counts what was sent.

A real `rstscope worker` process (the fixtures of tests/kafka/test_pipeline.py) gets real packet
messages (rstscope.codecs.packet) and an edge watermark; the endpoint is scraped until the packets in
equal what was sent and every connection went through to the rollups.
"""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from rstscope.codecs.packet import Watermark, encode_packet, encode_watermark, packet_key
from tests.builders import ack, rst, syn
from tests.kafka import test_pipeline

pytestmark = pytest.mark.kafka

# the pipeline fixture (topics unique to the test, workers stopped at the end) and the one it needs
pipeline = test_pipeline.pipeline
work = test_pipeline.work

EDGE = "metrics-test-edge"
CONNECTIONS = 24  # SYN, ACK, RST each: 72 packets over the 8 partitions


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        ctype = resp.headers["Content-Type"]
        text = resp.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    return ctype, samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _labels), v in samples.items() if n == name)


def test_metrics_endpoint_counts_what_was_sent(pipeline: Any, kafka_bootstrap: str) -> None:
    topo_path, topo, app_id, workers = pipeline
    proc, log = workers.start("--metrics-port", "0", "--metrics-host", "127.0.0.1")
    workers.wait_log(log, "metrics on http://", proc, 60)
    found = re.search(r"metrics on (http://\S+/metrics)", log.read_text())
    assert found, log.read_text()
    url = found.group(1)
    workers.wait_log(log, test_pipeline.READY, proc, 90)

    packets_topic = topo.topics["packets"].name
    partitions = topo.topics["packets"].partitions
    t0 = time.time() - 120  # event time a little behind the worker's clock (never "ahead of clock")
    prod = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = 0
    for i in range(CONNECTIONS):
        sport = 30000 + i
        for j, p in enumerate((syn(sport=sport), ack(sport=sport), rst(sport=sport))):
            p = p._replace(ts=t0 + i * 0.1 + j * 0.01)
            prod.produce(packets_topic, encode_packet(p, edge=EDGE), packet_key(p), partition=i % partitions)
            sent += 1
    end = t0 + 30  # past every RST by more than grace_s: every connection is decided
    for part in range(partitions):
        prod.produce(packets_topic, encode_watermark(Watermark(end, EDGE, False)), None, partition=part)
    assert prod.flush(30) == 0
    del prod

    deadline = time.monotonic() + 45
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, workers.logs()
        ctype, samples = scrape(url)
        assert ctype == "text/plain; version=0.0.4; charset=utf-8"
        if total(samples, "rstscope_packets_in_total") == sent \
                and total(samples, "rstscope_rollup_records_counted_total") == CONNECTIONS \
                and total(samples, "rstscope_rollup_rows_emitted_total") > 0:
            break
        time.sleep(0.5)
    assert total(samples, "rstscope_packets_in_total") == sent, (samples, workers.logs())
    assert total(samples, "rstscope_watermarks_in_total") == partitions
    assert total(samples, "rstscope_connections_emitted_total") == CONNECTIONS
    assert total(samples, "rstscope_rollup_records_counted_total") == CONNECTIONS
    assert total(samples, "rstscope_rollup_rows_emitted_total") > 0
    assert total(samples, "rstscope_dead_letters_total") == 0
    assert total(samples, "rstscope_connections_open") == 0  # every connection was decided
    assert samples[("rstscope_partitions_owned", (("stage", "connections"),))] == partitions
    for part in range(partitions):
        assert samples[("rstscope_watermark_seconds", (("partition", str(part)),))] == pytest.approx(end)
    edge_marks = {k: v for k, v in samples.items() if k[0] == "rstscope_edge_watermark_seconds"}
    if edge_marks:  # per-edge series (ConnectionStage.edge_status)
        assert len(edge_marks) == partitions and all(v == pytest.approx(end) for v in edge_marks.values())
    assert total(samples, "process_resident_memory_bytes") > 0
