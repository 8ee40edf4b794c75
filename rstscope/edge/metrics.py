"""Prometheus metrics of the edge, read from the producer's counters at scrape time.

A collector rather than per-packet ``Counter.inc()`` calls: the hot loop only bumps plain ints, and a
scrape (every few seconds) copies them. At 100k packets/s that is the difference between a few
percent of a core and none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rstscope.edge.producer import EdgeStats


class EdgeCollector:
    """Exposes EdgeStats, the queue depth and the kernel's drop count."""

    def __init__(self, stats: EdgeStats, depth: Callable[[], int], kernel_drops: Callable[[], int],
                 source: str) -> None:
        self.stats, self.depth, self.kernel_drops, self.source = stats, depth, kernel_drops, source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.stats
        for name, doc, value in (
            ("packets_read", "frames read from the source", s.read),
            ("packets_tcp", "frames that decoded to TCP", s.tcp),
            ("packets_quic", "UDP datagrams to or from the QUIC ports", s.quic),
            ("packets_sampled", "packets that passed direction, sampling and the first-N gate", s.sampled),
            ("packets_sent", "records handed to the Kafka producer", s.sent),
            ("packets_delivered", "records and watermarks acknowledged by the broker", s.delivered),
            ("delivery_failures", "records the broker did not take (after retries)", s.delivery_failures),
            ("watermarks", "watermark records sent", s.watermarks),
            ("watermarks_skipped", "periodic watermarks not sent because the queue was full (live edge)",
             s.watermarks_skipped),
        ):
            c = CounterMetricFamily(f"rstscope_edge_{name}", doc, labels=["source"])
            c.add_metric([self.source], value)
            yield c
        d = CounterMetricFamily("rstscope_edge_dropped", "packets not sent, by reason", labels=["source", "reason"])
        for reason, v in sorted({**s.dropped, "kernel": self.kernel_drops()}.items()):
            if ":" not in reason:
                d.add_metric([self.source, reason], v)
        yield d
        g = GaugeMetricFamily("rstscope_edge_queue_depth", "records waiting in the producer queue",
                              labels=["source"])
        g.add_metric([self.source], self.depth())
        yield g


def serve(port: int, collector: EdgeCollector, addr: str = "0.0.0.0") -> Any:
    """Start the /metrics HTTP endpoint in a daemon thread; returns the server (port 0: any free port)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
