"""`rstscope edge`: capture -> decode -> sampling gate -> (privacy) -> msgpack records on the packets topic.

UDP datagrams to the QUIC ports (``--quic-port``, default 443) take their own gate (``sampling.QuicGate``:
the same sampling, QUIC's reader at the edge, each attempt's first N datagrams) and leave as QUIC
datagram records in the same batches, so a partition's records stay in capture order (docs/edge.md).

Sources: ``--pcap FILE`` (replay), ``--interface IF`` (live, software sampling with the gate of
`rstscope analyze`), ``--nflog-group N`` (the kernel already sampled with `rstscope edge rules`: the
producer keeps every connection and the gate only enforces direction and the first-N limit).

Packet records go out in batches, one Kafka message per partition holding up to ``--batch-records``
records (and ``--batch-bytes``), sent when full or ``--linger-ms`` after its first record: a worker's
cost is per message, so this is what lets one worker take tens of thousands of packets per second.
A record's partition is a fixed function of its connection's 4-tuple (``codecs.packet.partition_of``),
the same on every edge, so every packet of a connection lands on one partition and the worker keeps
one connection table per partition. Every batch and watermark carries this edge's id (``--edge-id``,
default the host name: stable across restarts); workers hold a window open until every live edge has
passed it (docs/streaming.md). Event time reaches partitions that get no packets through watermarks
sent to every partition (after the batches before them): periodically (each ``--watermark-interval``
seconds of event time; a live source also advances it while idle) and, at the end, one with
``eof=True`` at the latest frame time.

Exit codes: 0 all delivered; 1 delivery failures; 2 bad arguments or setup; 3 data lost at the edge
(local queue full for longer than ``--max-wait``, or the kernel dropped packets we read too slowly).
"""

from __future__ import annotations

import argparse
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstscope.capture.files import CaptureError
from rstscope.codecs.packet import (
    MAX_BATCH_RECORDS,
    MAX_EDGE_ID,
    EdgeGeo,
    Watermark,
    encode_batch,
    encode_watermark,
    packet_fields,
    partition_of,
)
from rstscope.codecs.quic import quic_fields
from rstscope.config import TopologyError, load
from rstscope.core.table import AFTER_CLOSE, AFTER_IDLE, BEYOND_MAX, LATE, NO_SYN
from rstscope.decode import NON_TCP_REASONS, decode_frame
from rstscope.direction import Direction
from rstscope.edge import columns
from rstscope.edge.privacy import AddrTransform
from rstscope.edge.queue import BoundedSender
from rstscope.edge.sources import Frame, LiveCapture, LiveError, PcapFiles, Source
from rstscope.gc_policy import for_long_runs
from rstscope.geo import GeoDB, GeoError
from rstscope.kafka.roles import default_bootstrap, role_spec
from rstscope.options import csv_values, port_list, probability
from rstscope.packet import PacketRecord, pack_key
from rstscope.quic.packet import QuicDatagram
from rstscope.quic.record import SNI_POLICIES
from rstscope.quic.udp import decode_udp
from rstscope.sampling import Gate, QuicGate, Sampler

DEFAULT_CONF: dict[str, Any] = {
    "partitioner": "murmur2_random",  # same partition as aiokafka/Java for the same key
    "enable.idempotence": True,  # retries neither duplicate nor reorder: partition order = table input order
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 10,
}
DEFAULT_QUEUE_MAX = 100_000  # records
DEFAULT_BATCH_RECORDS = 500
DEFAULT_BATCH_BYTES = 256 * 1024  # well under the broker's default message.max.bytes (1 MiB)
DEFAULT_LINGER_S = 0.05
LIVE_SLACK_S = 2.0  # an idle live source promises "nothing older than now - 2 s" (NFLOG batches up to 1 s)
# What the gate keeps from leaving the edge (sampling.Gate's counters; core.table.step's packet counters).
GATE_DROPS = ("server_to_client", "other_traffic", "unsampled", NO_SYN, BEYOND_MAX, AFTER_CLOSE, AFTER_IDLE, LATE)
EXIT_DELIVERY = 1
EXIT_USAGE = 2
EXIT_LOST = 3


@dataclass
class EdgeStats:
    read: int = 0
    tcp: int = 0
    quic: int = 0  # UDP datagrams to or from the QUIC ports
    sampled: int = 0
    sent: int = 0
    delivered: int = 0
    delivery_failures: int = 0
    watermarks: int = 0
    watermarks_skipped: int = 0  # live edge, queue full: a periodic watermark not sent (a later one supersedes it)
    dropped: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # not drops: e.g. quic.initial_undecryptable

    def lost(self) -> int:
        """Packets that should have been sent and were not (queue full, kernel drops)."""
        return self.dropped.get("queue_full", 0) + self.dropped.get("kernel", 0)

    def line(self, elapsed: float) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items()) if v) or "none"
        notes = "".join(f", {k}={v}" for k, v in sorted(self.notes.items()) if v)
        return (f"edge: read {self.read} frames, tcp {self.tcp}, quic {self.quic}, sampled {self.sampled}, "
                f"sent {self.sent}, "
                f"delivered {self.delivered}, delivery failures {self.delivery_failures}, "
                f"watermarks {self.watermarks} ({self.watermarks_skipped} skipped); dropped: {dropped}; "
                f"lost {self.lost()}{notes}; {elapsed:.2f}s "
                f"({self.read / max(elapsed, 1e-9):,.0f} frames/s)")

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "tcp": self.tcp, "quic": self.quic, "sampled": self.sampled, "sent": self.sent,
                "delivered": self.delivered, "delivery_failures": self.delivery_failures,
                "watermarks": self.watermarks, "watermarks_skipped": self.watermarks_skipped,
                "dropped": dict(self.dropped), "errors": dict(self.errors), "notes": dict(self.notes),
                "lost": self.lost()}


class Batches:
    """Packet records waiting for their partition's next message: sent when a batch holds
    ``max_records`` records or about ``max_bytes``, or ``linger_s`` after its first record."""

    def __init__(self, partitions: int, max_records: int = DEFAULT_BATCH_RECORDS,
                 max_bytes: int = DEFAULT_BATCH_BYTES, linger_s: float = DEFAULT_LINGER_S) -> None:
        if not 1 <= max_records <= MAX_BATCH_RECORDS:
            raise ValueError(f"batch records must be 1..{MAX_BATCH_RECORDS}")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.records: list[list[Any]] = [[] for _ in range(partitions)]  # TCP lists, QUIC tuples
        self.size = [0] * partitions  # bytes, estimated from above
        self.since = [0.0] * partitions  # monotonic time of the batch's first record
        self.mixed = [False] * partitions  # its batch holds QUIC datagrams (a kind-3 message)

    def add(self, partition: int, fields: list[Any] | tuple[Any, ...], size: int) -> bool:
        """Add a record; True when its batch is full (send it now)."""
        recs = self.records[partition]
        if not recs:
            self.since[partition] = time.monotonic()
        recs.append(fields)
        self.size[partition] += size
        return len(recs) >= self.max_records or self.size[partition] >= self.max_bytes

    def take(self, partition: int) -> list[Any]:
        self.mixed[partition] = False
        recs = self.records[partition]
        self.records[partition] = []
        self.size[partition] = 0
        return recs

    def stale(self, now: float) -> list[int]:
        """Partitions whose batch waited linger_s."""
        return [p for p, recs in enumerate(self.records) if recs and now - self.since[p] >= self.linger_s]

    def waiting(self) -> list[int]:
        return [p for p, recs in enumerate(self.records) if recs]


class Edge:
    """One producer run: owns the gate, the batches, the Kafka sender and the event-time bookkeeping."""

    def __init__(self, producer: Any, topic: str, partitions: int, gate: Gate, source: str,
                 watermark_interval: float = 1.0, client_ip: AddrTransform | None = None,
                 max_wait_s: float | None = None, geo: GeoDB | None = None,
                 batches: Batches | None = None, quic: QuicGate | None = None) -> None:
        self.producer = producer
        self.quic = quic  # None: UDP is not looked at (every non-TCP frame is non_tcp)
        self.geo = geo  # looked up on the raw address, before client_ip hides it
        self.topic = topic
        self.partitions = partitions
        self.gate = gate
        self.source = source
        self.interval = watermark_interval
        self.client_ip = client_ip
        self.sender = BoundedSender(producer, topic, max_wait_s)
        self.batches = batches or Batches(partitions)
        # batch numbers: a worker drops a batch the transport wrote twice (codecs/packet.py, docs/streaming.md)
        self.run_id = secrets.randbits(63)
        self.seq = [0] * partitions  # per partition: the number of its next batch
        self.stats = EdgeStats()
        self.end_ts = float("-inf")  # latest frame of any kind
        self.next_wm = float("-inf")
        # a batch never holds two windows: the worker closes a window while it processes the batch that
        # starts the next one, and a replay from that batch (its committed offset may pass the closed
        # window's pinned openers) would take the closed window's packets without their tuples' state
        self.window_s = gate.size
        self.window_end = float("-inf")  # the end of end_ts's window: the batches are cut there
        self.stop = False
        self.input: Source | None = None
        # frames go through the columns (edge/columns.py), unless paced (--rate) or set False: frame by
        # frame, the reference (the two send the same messages; tests/edge/test_edge_columns.py)
        self.columns = True

    def _on_delivery(self, n: int) -> Callable[[Any, Any], None]:
        """The delivery callback of a message holding ``n`` records (a watermark: 1). The stats count
        records and watermarks: delivered + failures = sent + watermarks once everything is confirmed."""

        def delivered(err: Any, _msg: Any) -> None:
            if err is None:
                self.stats.delivered += n
            else:
                self.stats.delivery_failures += n
                self.stats.errors[str(err.name() if hasattr(err, "name") else err)] += n

        return delivered


    def watermark(self, eof: bool) -> None:
        """Send the current event time to every partition (idle partitions must advance too), after
        the batches waiting for them: a watermark never overtakes a packet it promises about.

        The end of input (``eof``) and a file replay's watermarks always wait for room in the queue. A
        live edge's periodic watermark does not (``max_wait_s``): while the brokers are away, waiting
        for room would stop the reader and let the kernel drop packets unseen; skipping it loses no
        data, because the next one carries a later time (counted: ``watermarks_skipped``)."""
        self.flush()
        if self.end_ts == float("-inf"):
            return
        value = encode_watermark(Watermark(self.end_ts, self.source, eof))
        ts_ms = max(0, int(self.end_ts * 1000))
        block = eof or self.sender.max_wait_s is None
        for p in range(self.partitions):
            if self.sender.send(value, None, {"timestamp": ts_ms, "on_delivery": self._on_delivery(1),
                                              "partition": p}, block=block):
                self.stats.watermarks += 1
            else:
                self.stats.watermarks_skipped += 1
        self.next_wm = self.end_ts + self.interval

    def _send(self, partition: int) -> None:
        """Send a partition's batch as one message (or drop and count its records: queue full)."""
        mixed = self.batches.mixed[partition]
        recs = self.batches.take(partition)
        n = len(recs)
        kw = {"timestamp": max(0, int(self.end_ts * 1000)), "on_delivery": self._on_delivery(n),
              "partition": partition}
        if self.sender.send(encode_batch(self.source, recs, (self.run_id, self.seq[partition]), mixed), None, kw):
            self.seq[partition] += 1  # a dropped batch keeps its number: a gap means lost in delivery
            self.stats.sent += n
        else:
            self.stats.dropped["queue_full"] += n

    def flush(self, stale_only: bool = False) -> None:
        """Send the waiting batches (``stale_only``: those that waited linger_s)."""
        b = self.batches
        for p in b.stale(time.monotonic()) if stale_only else b.waiting():
            self._send(p)

    def _client(self, src: bytes) -> tuple[EdgeGeo | None, bytes]:
        """The client's geolocation (looked up on the raw address, when configured) and its address as
        it may leave the edge (``--client-ip``): the one place a client address is prepared to leave."""
        geo = None
        if self.geo is not None:
            g = self.geo.lookup(src)
            geo = EdgeGeo(g.country, g.asn)
        return geo, src if self.client_ip is None else self.client_ip(src)

    def _publish(self, rec: PacketRecord) -> None:
        geo, src = self._client(rec.src)
        if src is not rec.src:
            rec = rec._replace(src=src)  # the raw tuple keyed the gate; this one Kafka
        p = partition_of(rec.packed_key, self.partitions)
        if self.batches.add(p, packet_fields(rec, geo), 40 + 2 * len(rec.src)):
            self._send(p)

    def _udp(self, ts: float, linktype: int, data: bytes) -> bool:
        """A frame that is not TCP: True when it was a UDP datagram to or from a QUIC port (then it is
        accounted for here: sampled and published, or counted as dropped by name)."""
        assert self.quic is not None
        dg = decode_udp(ts, linktype, data)
        if isinstance(dg, str):
            if dg in ("non_ip", "non_udp"):
                return False
            self.stats.dropped[f"quic.{dg}"] += 1  # a UDP datagram cut or malformed: no port to tell by
            return True
        ports = self.quic.ports
        if dg.dport not in ports and dg.sport not in ports:
            return False
        self.stats.quic += 1
        got = self.quic.admit(dg)
        if got is not None:
            self.stats.sampled += 1
            self._publish_quic(got)
        return True

    def _publish_quic(self, dg: QuicDatagram) -> None:
        r0 = dg.recs[0]
        geo, src = self._client(r0.src)
        p = partition_of(pack_key(src, r0.sport, r0.dst, r0.dport), self.partitions)
        self.batches.mixed[p] = True
        if self.batches.add(p, quic_fields(dg, src, geo), 40 + 2 * len(src) + 24 * len(dg.recs)):
            self._send(p)

    def stop_now(self) -> None:
        self.stop = True
        if self.input is not None:
            self.input.stopped = True

    def _keep_up(self) -> None:
        """Between frames of a slow source (live and idle, or a paced replay): batches that waited
        linger_s and a due watermark go out on time, not only after the next read batch."""
        self.flush(stale_only=True)
        self.producer.poll(0)
        if self.end_ts >= self.next_wm:
            self.watermark(False)

    def run(self, src: list[Path] | Source, rate: float | None = None) -> EdgeStats:
        """Send everything ``src`` holds (capture files, or a ``Source``), through the columns
        (``edge.columns``: file slices, or each batch a source reads) unless ``rate`` paces the replay or
        ``self.columns`` is off: then frame by frame, the reference. Both send the same messages."""
        if self.columns and isinstance(src, list) and not rate:
            return columns.run_columns(self, src)
        source: Source = PcapFiles(src) if isinstance(src, list) else src
        self.input = source
        s = self.stats
        live = source.live
        decoder = columns.decoder(self) if self.columns and not rate else None
        start = time.monotonic()
        for batch in source.batches():
            if self.stop:
                break
            if not batch:  # an idle live source: event time is wall-clock time
                now = time.time() - LIVE_SLACK_S
                if now > self.end_ts and self.end_ts != float("-inf"):
                    self.end_ts = now
                self._keep_up()
                continue
            if decoder is not None:
                columns.take_batch(self, decoder, batch)
            else:
                self._frame_by_frame(batch, rate, start)
            if live:
                self.flush(stale_only=True)
                self.producer.poll(0)
            if self.end_ts >= self.next_wm:
                self.watermark(False)
        if isinstance(source, PcapFiles):
            for reason, k in source.malformed.items():
                s.dropped["malformed"] += k
                s.dropped[f"malformed:{reason}"] += k
        self.finish()
        return s

    def _frame_by_frame(self, batch: list[Frame], rate: float | None, start: float) -> None:
        """A source's batch, one frame after another (the reference; ``rate``: paced since ``start``)."""
        s = self.stats
        admit = self.gate.admit
        poll = self.producer.poll
        for ts, linktype, data in batch:
            s.read += 1
            if rate and not s.read & 7:  # every 8 frames: a slow replay sleeps (and speaks) often
                ahead = s.read / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
                self._keep_up()  # a paced replay is slow like a live source
            if ts > self.end_ts:
                self.end_ts = ts
            if ts >= self.window_end:  # a new window: what waits belongs to the ones before
                self.flush()
                self.window_end = (ts // self.window_s + 1) * self.window_s
            rec = decode_frame(ts, linktype, data)
            if isinstance(rec, str):
                if rec == "non_tcp" and self.quic is not None and self._udp(ts, linktype, data):
                    continue
                if rec in NON_TCP_REASONS:
                    s.dropped["non_tcp"] += 1
                else:
                    s.dropped["malformed"] += 1
                    s.dropped[f"malformed:{rec}"] += 1
                continue
            s.tcp += 1
            if admit(rec):
                s.sampled += 1
                self._publish(rec)
                # delivery reports every 256 records; not counted on ``sent``, which grows by whole
                # batches: a multiple of 256 there held until the next batch, polling on every record
                if not s.sampled & 0xFF:
                    poll(0)

    def finish(self) -> None:
        s = self.stats
        for k in GATE_DROPS:
            s.dropped[k] = self.gate.counters.get(k, 0)
        if self.quic is not None:
            for k, v in self.quic.counters.items():
                if k != "sampled":  # the reader's quic_<decode reason> becomes quic.<decode reason>
                    s.dropped[f"quic.{k.removeprefix('quic_')}"] = v
            for k, v in self.quic.reader.counters.items():
                s.notes[f"quic.{k}"] = v
        if self.input is not None and self.input.kernel_drops():
            s.dropped["kernel"] = self.input.kernel_drops()
        self.watermark(True)


def _conf_pair(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"-X wants key=value, got {text!r}")
    return k.strip(), v.strip()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rstscope edge", description=__doc__ + "\n`rstscope edge rules --help`: "
                                "the kernel sampling rules.", formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pcap", action="append", type=Path, metavar="FILE",
                     help="capture file (pcap/pcapng, maybe .gz/.xz); repeatable, read in order")
    src.add_argument("--interface", metavar="IF", help="live capture on an interface (software sampling)")
    src.add_argument("--nflog-group", type=int, metavar="N",
                     help="read NFLOG group N (kernel sampling by `rstscope edge rules`; no further sampling)")
    p.add_argument("--netns", default=None, metavar="NAME",
                   help="open --interface/--nflog-group in this network namespace (ip netns name or path); "
                        "Kafka and metrics stay in the current one")
    p.add_argument("--bpf", default=None, metavar="FILTER", help="libpcap filter for --interface")
    p.add_argument("--rate", type=float, default=None, metavar="PPS", help="replay at most PPS frames/s")
    p.add_argument("--bootstrap", default=None, help="bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topology", type=Path, default=None, help="topology.yaml to use")
    p.add_argument("--server-ip", action="append", metavar="IP|CIDR", help="server addresses (repeatable)")
    p.add_argument("--server-port", action="append", metavar="PORT", help="server ports (repeatable)")
    p.add_argument("--quic-port", action="append", metavar="PORT",
                   help="UDP server ports read as QUIC (repeatable, a,b; default 443; docs/edge.md)")
    p.add_argument("--no-quic", action="store_true", help="TCP only: UDP frames are counted as non_tcp")
    p.add_argument("--sni", choices=SNI_POLICIES, default="hash",
                   help="what leaves the edge of a QUIC ClientHello's SNI: a pseudonym (hash, default), the name "
                        "(keep), nothing (none)")
    p.add_argument("--sample", type=probability, default=None, metavar="P",
                   help="probability of keeping a new connection (default: topology sampling.probability; "
                        "1 with --nflog-group)")
    p.add_argument("--sample-mode", choices=("random", "hash"), default=None)
    p.add_argument("--client-ip", default=None, metavar="truncate:V4,V6|hash:KEYFILE",
                   help="replace client addresses before they leave the host (docs/edge.md)")
    p.add_argument("--geo", type=Path, default=None, metavar="DIR",
                   help="geolocate clients here, before --client-ip hides their addresses; the records carry "
                        "country and ASN to the workers (docs/wire-formats.md)")
    p.add_argument("--edge-id", "--source", dest="edge_id", default=None, metavar="ID",
                   help="this edge's id on its batches and watermarks: stable across restarts, unique per "
                        "capture (default: the host name; docs/streaming.md)")
    p.add_argument("--batch-records", type=int, default=DEFAULT_BATCH_RECORDS, metavar="N",
                   help=f"packet records per Kafka message at most (1..{MAX_BATCH_RECORDS})")
    p.add_argument("--batch-bytes", type=int, default=DEFAULT_BATCH_BYTES, metavar="B",
                   help="about this many bytes per Kafka message at most")
    p.add_argument("--linger-ms", type=float, default=DEFAULT_LINGER_S * 1000, metavar="MS",
                   help="send a batch at most this long after its first record (live sources)")
    p.add_argument("--watermark-interval", type=float, default=1.0, metavar="S",
                   help="send a watermark to every partition each S seconds of event time")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on this port (0: any free port, printed on stderr)")
    p.add_argument("--metrics-addr", default="0.0.0.0", help="address of the metrics endpoint")
    p.add_argument("--queue-max", type=int, default=DEFAULT_QUEUE_MAX, metavar="N",
                   help="records buffered for the broker at most (in batches: librdkafka "
                        "queue.buffering.max.messages = N / --batch-records)")
    p.add_argument("--max-wait", type=float, default=None, metavar="S",
                   help="when the queue is full, wait at most S seconds, then drop and count "
                        "(default: 0.5 for live sources, forever for --pcap)")
    p.add_argument("-X", dest="conf", action="append", type=_conf_pair, default=[], metavar="KEY=VALUE",
                   help="librdkafka producer setting (overrides the defaults)")
    p.add_argument("--json", action="store_true", help="also print the summary as JSON on stdout")
    return p


def _fail(msg: str) -> int:
    print(f"rstscope edge: {msg}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "rules":
        from rstscope.edge import rules

        return rules.main(argv[1:])
    from confluent_kafka import Producer

    args = parser().parse_args(argv)
    try:
        topo = load(args.topology)
        spec = role_spec(topo, "packets")
    except TopologyError as e:
        return _fail(str(e))
    for f in args.pcap or []:
        if not f.is_file():
            return _fail(f"{f}: no such file")
    try:
        ports = port_list(args.server_port)
        quic_ports = port_list(args.quic_port, "--quic-port") or [443]
    except ValueError as e:
        return _fail(str(e))
    client_ip = None
    if args.client_ip:
        from rstscope.edge.privacy import parse

        try:
            client_ip = parse(args.client_ip)
        except ValueError as e:
            return _fail(str(e))
    source: Source
    try:
        if args.pcap:
            source = PcapFiles(args.pcap)
        elif args.interface:
            source = LiveCapture(args.interface, args.bpf, netns=args.netns)
        else:
            source = LiveCapture(f"nflog:{args.nflog_group}", netns=args.netns)
    except LiveError as e:
        return _fail(str(e))
    from rstscope.kafka import security

    try:  # TLS / SASL from the environment or $RSTSCOPE_KAFKA_CONFIG, never from the command line
        sec = security.load()
    except security.SecurityConfigError as e:
        return _fail(str(e))
    if not 1 <= args.batch_records <= MAX_BATCH_RECORDS or args.batch_bytes < 1024 or args.linger_ms < 0:
        return _fail(f"--batch-records must be 1..{MAX_BATCH_RECORDS}, --batch-bytes >= 1024, --linger-ms >= 0")
    edge_id = args.edge_id or socket.gethostname()
    if not edge_id or len(edge_id) > MAX_EDGE_ID:
        return _fail(f"--edge-id must be 1..{MAX_EDGE_ID} characters")
    bootstrap = args.bootstrap or default_bootstrap()
    messages = max(1, -(-args.queue_max // args.batch_records))  # the bound is in records; the queue's in messages
    conf = {**DEFAULT_CONF, "bootstrap.servers": bootstrap, "queue.buffering.max.messages": messages,
            **sec.librdkafka(), **dict(args.conf)}
    try:
        producer = Producer(conf)
        md = producer.list_topics(spec.name, timeout=15)
    except Exception as e:
        return _fail(f"{bootstrap}: {e}")
    t = md.topics.get(spec.name)
    if t is None or t.error is not None or not t.partitions:
        return _fail(f"topic {spec.name} does not exist on {bootstrap} (run `rstscope topics apply`)")
    if len(t.partitions) != spec.partitions:
        return _fail(f"topic {spec.name} has {len(t.partitions)} partitions, topology says "
                     f"{spec.partitions}; refusing to send (run `rstscope topics check`)")
    sampling = topo.sampling
    if args.nflog_group is not None:
        probability = args.sample or 1.0  # the kernel rule sampled already
    else:
        probability = args.sample if args.sample is not None else sampling.probability
    sampler = Sampler(probability, args.sample_mode or sampling.mode, sampling.hash_key)
    server_ips = csv_values(args.server_ip)
    gate = Gate(Direction(server_ips, ports), sampler, topo.window)
    quic = None if args.no_quic else QuicGate(server_ips, quic_ports, sampler, topo.window, args.sni)
    max_wait = args.max_wait if args.max_wait is not None else (None if args.pcap else 0.5)
    try:
        geo = GeoDB.open(args.geo) if args.geo else None
    except GeoError as e:
        return _fail(str(e))
    edge = Edge(producer, spec.name, spec.partitions, gate, edge_id, args.watermark_interval, client_ip, max_wait,
                geo, Batches(spec.partitions, args.batch_records, args.batch_bytes, args.linger_ms / 1000), quic)
    if args.metrics_port is not None:
        from rstscope.edge.metrics import EdgeCollector, serve

        server = serve(args.metrics_port, EdgeCollector(edge.stats, edge.sender.depth, source.kernel_drops,
                                                        edge_id), args.metrics_addr)
        print(f"rstscope edge: metrics on http://{args.metrics_addr}:{server.server_port}/metrics ",
              file=sys.stderr, flush=True)

    def on_signal(signum: int, _frame: Any) -> None:
        edge.stop_now()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    if source.live:
        print(f"rstscope edge: capturing on {source.name}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    code = 0
    for_long_runs()
    try:
        edge.run(list(args.pcap) if args.pcap else source, args.rate)
    except CaptureError as e:
        print(f"rstscope edge: {e}", file=sys.stderr)
        code = EXIT_USAGE
        edge.finish()
    finally:
        producer.flush(60)
        for s, h in old.items():
            signal.signal(s, h)
        if isinstance(source, LiveCapture):
            source.close()
    st = edge.stats
    left = st.sent + st.watermarks - st.delivered - st.delivery_failures  # in messages never confirmed
    if left:
        st.delivery_failures += left
        st.errors["not_flushed"] += left
    print(st.line(time.monotonic() - t0), file=sys.stderr, flush=True)
    if args.json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps({"source": edge_id, **st.to_dict()}, option=orjson.OPT_APPEND_NEWLINE))
        sys.stdout.flush()
    if st.delivery_failures:
        return EXIT_DELIVERY
    if st.lost():
        return EXIT_LOST
    return code


if __name__ == "__main__":
    raise SystemExit(main())
