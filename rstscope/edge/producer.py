"""`rstscope edge`: a capture file -> decode -> sampling gate -> msgpack records on the packets topic.

The gate is the one `rstscope analyze` uses, so the edge sends exactly the packets the offline table
would see. Records are keyed by the connection's 4-tuple (murmur2, the partitioner aiokafka and Java
use), so every packet of a connection lands on one partition and the worker can keep one connection
table per partition. Event time reaches partitions that get no packets through watermarks sent to
every partition: periodically (each ``--watermark-interval`` seconds of event time) and, at the end,
one with ``eof=True`` at the latest frame time of any kind (the end-of-input rule of ``analyze``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstscope.capture.files import CaptureError, FileStats, read_frames
from rstscope.codecs.packet import Watermark, encode_packet, encode_watermark, packet_key
from rstscope.config import TopologyError, load
from rstscope.decode import NON_TCP_REASONS, decode_frame
from rstscope.direction import Direction
from rstscope.sampling import Gate, Sampler
from rstscope.streams.topics import default_bootstrap, role_spec

DEFAULT_CONF: dict[str, Any] = {
    "partitioner": "murmur2_random",  # same partition as aiokafka/Java for the same key
    "enable.idempotence": True,  # retries neither duplicate nor reorder: partition order = table input order
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 10,
}


@dataclass
class EdgeStats:
    read: int = 0
    tcp: int = 0
    sampled: int = 0
    sent: int = 0
    delivered: int = 0
    delivery_failures: int = 0
    watermarks: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def line(self, elapsed: float) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items()) if v) or "none"
        return (f"edge: read {self.read} frames, tcp {self.tcp}, sampled {self.sampled}, sent {self.sent}, "
                f"delivered {self.delivered}, delivery failures {self.delivery_failures}, "
                f"watermarks {self.watermarks}; dropped: {dropped}; {elapsed:.2f}s "
                f"({self.read / max(elapsed, 1e-9):,.0f} frames/s)")

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "tcp": self.tcp, "sampled": self.sampled, "sent": self.sent,
                "delivered": self.delivered, "delivery_failures": self.delivery_failures,
                "watermarks": self.watermarks, "dropped": dict(self.dropped), "errors": dict(self.errors)}


class Edge:
    """One producer run: owns the gate, the Kafka producer and the event-time bookkeeping."""

    def __init__(self, producer: Any, topic: str, partitions: int, gate: Gate, source: str,
                 watermark_interval: float = 1.0) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.gate = gate
        self.source = source
        self.interval = watermark_interval
        self.stats = EdgeStats()
        self.end_ts = float("-inf")  # latest frame of any kind
        self.next_wm = float("-inf")
        self.stop = False

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.delivery_failures += 1
            self.stats.errors[str(err.name() if hasattr(err, "name") else err)] += 1

    def _produce(self, value: bytes, key: bytes | None, ts: float, partition: int | None = None) -> None:
        kw: dict[str, Any] = {"timestamp": max(0, int(ts * 1000)), "on_delivery": self._on_delivery}
        if partition is not None:
            kw["partition"] = partition
        while True:
            try:
                self.producer.produce(self.topic, value, key, **kw)
                return
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.05)

    def watermark(self, eof: bool) -> None:
        """Send the current event time to every partition (idle partitions must advance too)."""
        if self.end_ts == float("-inf"):
            return
        value = encode_watermark(Watermark(self.end_ts, self.source, eof))
        for p in range(self.partitions):
            self._produce(value, None, self.end_ts, p)
            self.stats.watermarks += 1
        self.next_wm = self.end_ts + self.interval

    def frames(self, paths: list[Path]) -> Iterator[tuple[float, int, bytes]]:
        for path in paths:
            st = FileStats(str(path))
            yield from read_frames(path, st)
            for reason, k in st.errors.items():
                self.stats.dropped["malformed"] += k
                self.stats.dropped[f"malformed:{reason}"] += k
            if self.stop:
                return

    def run(self, paths: list[Path], rate: float | None = None) -> EdgeStats:
        s = self.stats
        admit = self.gate.admit
        poll = self.producer.poll
        start = time.monotonic()
        for ts, linktype, data in self.frames(paths):
            if self.stop:
                break
            s.read += 1
            if rate and not s.read % 64:
                ahead = s.read / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if ts > self.end_ts:
                self.end_ts = ts
            rec = decode_frame(ts, linktype, data)
            if isinstance(rec, str):
                if rec in NON_TCP_REASONS:
                    s.dropped["non_tcp"] += 1
                else:
                    s.dropped["malformed"] += 1
                    s.dropped[f"malformed:{rec}"] += 1
                continue
            s.tcp += 1
            if admit(rec):
                s.sampled += 1
                self._produce(encode_packet(rec), packet_key(rec), rec.ts)
                s.sent += 1
                if not s.sent & 0xFF:
                    poll(0)
            if self.end_ts >= self.next_wm:
                self.watermark(False)
        for k in ("server_to_client", "other_traffic", "unsampled", "no_syn", "beyond_max_packets"):
            s.dropped[k] = self.gate.counters.get(k, 0)
        self.watermark(True)
        return s


def _csv(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _probability(text: str) -> float:
    try:
        a, _, b = text.partition("/")
        p = float(a) / float(b) if b else float(a)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability (e.g. 0.0001 or 1/10000)") from None
    if not 0.0 < p <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not in (0, 1]")
    return p


def _conf_pair(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"-X wants key=value, got {text!r}")
    return k.strip(), v.strip()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rstscope edge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pcap", action="append", type=Path, required=True, metavar="FILE",
                   help="capture file (pcap/pcapng, maybe .gz/.xz); repeatable, read in order")
    p.add_argument("--rate", type=float, default=None, metavar="PPS", help="replay at most PPS frames/s")
    p.add_argument("--bootstrap", default=None, help="bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topology", type=Path, default=None, help="topology.yaml to use")
    p.add_argument("--server-ip", action="append", metavar="IP|CIDR", help="server addresses (repeatable)")
    p.add_argument("--server-port", action="append", metavar="PORT", help="server ports (repeatable)")
    p.add_argument("--sample", type=_probability, default=None, metavar="P",
                   help="probability of keeping a new connection (default: topology sampling.probability)")
    p.add_argument("--sample-mode", choices=("random", "hash"), default=None)
    p.add_argument("--source", default=None, help="producer id in watermarks (default host:pid:random)")
    p.add_argument("--watermark-interval", type=float, default=1.0, metavar="S",
                   help="send a watermark to every partition each S seconds of event time")
    p.add_argument("-X", dest="conf", action="append", type=_conf_pair, default=[], metavar="KEY=VALUE",
                   help="librdkafka producer setting (overrides the defaults)")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    from confluent_kafka import Producer

    args = parser().parse_args(argv)
    try:
        topo = load(args.topology)
        spec = role_spec(topo, "packets")
    except TopologyError as e:
        print(f"rstscope edge: {e}", file=sys.stderr)
        return 2
    for f in args.pcap:
        if not f.is_file():
            print(f"rstscope edge: {f}: no such file", file=sys.stderr)
            return 2
    ports = []
    for v in _csv(args.server_port):
        if not v.isdigit() or not 0 < int(v) < 65536:
            print(f"rstscope edge: --server-port {v!r} is not a port number", file=sys.stderr)
            return 2
        ports.append(int(v))
    bootstrap = args.bootstrap or default_bootstrap()
    conf = {**DEFAULT_CONF, "bootstrap.servers": bootstrap, **dict(args.conf)}
    producer = Producer(conf)
    try:
        md = producer.list_topics(spec.name, timeout=15)
    except Exception as e:
        print(f"rstscope edge: {bootstrap}: {e}", file=sys.stderr)
        return 2
    t = md.topics.get(spec.name)
    if t is None or t.error is not None or not t.partitions:
        print(f"rstscope edge: topic {spec.name} does not exist on {bootstrap} (run `rstscope topics apply`)",
              file=sys.stderr)
        return 2
    if len(t.partitions) != spec.partitions:
        print(f"rstscope edge: topic {spec.name} has {len(t.partitions)} partitions, topology says "
              f"{spec.partitions}; refusing to send (run `rstscope topics check`)", file=sys.stderr)
        return 2
    sampling = topo.sampling
    gate = Gate(Direction(_csv(args.server_ip), ports),
                Sampler(args.sample if args.sample is not None else sampling.probability,
                        args.sample_mode or sampling.mode, sampling.hash_key),
                topo.window.max_packets, topo.window.idle_timeout_s)
    source = args.source or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    edge = Edge(producer, spec.name, spec.partitions, gate, source, args.watermark_interval)

    def on_signal(signum: int, _frame: Any) -> None:
        edge.stop = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    t0 = time.monotonic()
    code = 0
    try:
        edge.run(args.pcap, args.rate)
    except CaptureError as e:
        print(f"rstscope edge: {e}", file=sys.stderr)
        code = 2
        edge.watermark(True)
    finally:
        left = producer.flush(60)
        for s, h in old.items():
            signal.signal(s, h)
    st = edge.stats
    if left:
        st.delivery_failures += left
        st.errors["not_flushed"] += left
    print(st.line(time.monotonic() - t0), file=sys.stderr)
    if args.json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps({"source": source, **st.to_dict()}, option=orjson.OPT_APPEND_NEWLINE))
        sys.stdout.flush()
    if st.delivery_failures:
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
