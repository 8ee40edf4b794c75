"""Benchmark the streaming path against its floors, on one real broker, in one run.

1. Edge: `rstscope edge`'s loop (read, decode, gate, batch, encode, produce, flush) vs a raw
   confluent-kafka producer sending the same records, pre-encoded, one per message, with the same
   settings (librdkafka's own batching on: lz4, linger 10 ms): records per second.
2. Worker: `rstscope worker` (both agents) on the edge's batches vs a trivial Faust agent that decodes
   one record per message (the raw producer's topic): packet records per second. Each is timed from
   the consumer group's first commit to the commit that reaches the end offsets, over the records in
   the messages between the two (counted exactly, message by message). (The worker commits a
   window's offsets only when the window closes: connections that have not ended hold them, SPEC 4.
   The input spans several 15-minute windows so that its commits advance during the run.)
3. In-process: ConnectionStage without Kafka (the core's own cost), on the same batches, as the agent
   runs it: ``take`` per message, ``records`` per checkpoint (FLUSH_RECORDS connections).

    python bench/bench_pipeline.py [--bootstrap B] [--connections 25000]
    python bench/bench_pipeline.py --only edge [--rounds 5]   # 1. alone: edge and raw in turn, N rounds, medians

Without --bootstrap (and $KAFKA_BOOTSTRAP_SERVERS) a local broker is started in a temp dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from rstscope import config  # noqa: E402
from rstscope.capture.files import FileStats, read_frames  # noqa: E402
from rstscope.codecs.jsonl import dumps  # noqa: E402
from rstscope.codecs.packet import Watermark, decode_message, encode_packet, packet_key  # noqa: E402
from rstscope.core.rollup import bucket_of  # noqa: E402
from rstscope.decode import decode_frame  # noqa: E402
from rstscope.direction import Direction  # noqa: E402
from rstscope.edge.producer import DEFAULT_CONF, Edge  # noqa: E402
from rstscope.sampling import Gate, Sampler  # noqa: E402
from rstscope.streams.connection_agent import FLUSH_RECORDS, ConnectionStage, rollup_batches  # noqa: E402
from rstscope.streams.rollup_agent import RollupStage  # noqa: E402
from rstscope.streams.topics import all_specs, apply  # noqa: E402

SERVER = bytes([192, 0, 2, 1])
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10


def synth_pcap(path: Path, n: int) -> int:
    """n connections of 4 client packets each, outcomes mixed (RST after data, FIN, timeout), one every
    0.2 s of event time (25,000 span 5,000 s: six 15-minute windows)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    frames = 0
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    for i in range(n):
        src = bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255])
        sport = 1024 + i % 60000
        seq = (i * 7919) & 0xFFFFFFFF
        t0 = 1_700_000_000 + i * 0.2
        last = (RST, FIN | ACK, ACK)[i % 3]
        pkts = [(SYN, 0, 0), (ACK, 1, 0), (PSH | ACK, 1, 100), (last, 101, 0)]
        for k, (flags, off, plen) in enumerate(pkts):
            ts = t0 + k * 0.01
            tcp = struct.pack("!HHIIBBHHH", sport, 443, (seq + off) & 0xFFFFFFFF, 1 if flags & ACK else 0,
                              5 << 4, flags, 64240, 0, 0)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + plen, (i + k) & 0xFFFF, 0x4000, 64, 6, 0, src,
                             SERVER)
            frame = eth + ip + tcp + b"x" * plen
            sec = int(ts)
            out.append(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)) + frame)
            frames += 1
    path.write_bytes(b"".join(out))
    return frames


def topology_file(tmp: Path, tag: str) -> Path:
    import yaml

    raw = yaml.safe_load(config.DEFAULT_PATH.read_text())
    for role, t in raw["topics"].items():
        t["name"] = f"{tag}.{role}"
    # one edge replaying a backlog: a short warm-up (docs/streaming.md), which would otherwise hold every
    # window for its first seconds and move the work out of the timed span
    raw["edges"] = {**raw.get("edges", {}), "idle_s": 0.5}
    p = tmp / "topology.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def gate(topo: config.Topology) -> Gate:
    w = topo.window
    return Gate(Direction(["192.0.2.1"], [443]), Sampler(1.0), w)


def bench_edge(bootstrap: str, topo: config.Topology, pcap: Path) -> tuple[float, int]:
    spec = topo.topics["packets"]
    producer = Producer({**DEFAULT_CONF, "bootstrap.servers": bootstrap})
    edge = Edge(producer, spec.name, spec.partitions, gate(topo), "bench")
    t0 = time.perf_counter()
    edge.run([pcap])
    assert producer.flush(120) == 0
    dt = time.perf_counter() - t0
    assert edge.stats.delivery_failures == 0
    return dt, edge.stats.sent


def records_at(bootstrap: str, topic: str) -> dict[int, list[int]]:
    """Per partition, the packet records before each offset (cumulative): records between two
    committed offsets, exactly."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-count-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    ends = end_offsets(bootstrap, topic)
    cum = {p: [0] for p in ends}
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    deadline = time.monotonic() + 120
    while any(len(cum[p]) - 1 < ends[p] for p in ends) and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error() is None:
                d = decode_message(m.value())
                cum[m.partition()].append(cum[m.partition()][-1] + (0 if isinstance(d, Watermark) else len(d.packets)))
    c.close()
    return cum


def read_through(bootstrap: str, topic: str) -> int:
    """Read a topic to its end once (librdkafka, nothing decoded), so that the timed consumer after it
    meets a warm broker (fetch path compiled by the JVM, segments in the page cache) whichever runs
    first. Returns the messages read."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-warm-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    ends = end_offsets(bootstrap, topic)
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    seen = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + 120
    while any(seen[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        for m in c.consume(1000, 1.0):
            if m.error() is None:
                seen[m.partition()] = m.offset() + 1
    c.close()
    return sum(seen.values())


def bench_raw(bootstrap: str, topic: str, pcap: Path, topo: config.Topology) -> tuple[float, int]:
    g = gate(topo)
    msgs = []
    for ts, lt, data in read_frames(pcap, FileStats(str(pcap))):
        rec = decode_frame(ts, lt, data)
        if not isinstance(rec, str) and g.admit(rec):
            msgs.append((packet_key(rec), encode_packet(rec), int(rec.ts * 1000)))
    producer = Producer({**DEFAULT_CONF, "bootstrap.servers": bootstrap})
    produce, poll = producer.produce, producer.poll
    t0 = time.perf_counter()
    for i, (k, v, ts) in enumerate(msgs):
        while True:
            try:
                produce(topic, v, k, timestamp=ts)
                break
            except BufferError:
                poll(0.05)
        if not i & 0xFF:
            poll(0)
    assert producer.flush(120) == 0
    return time.perf_counter() - t0, len(msgs)


class _Keep:
    """What `Edge` needs of a producer: keeps every message (the in-process bench's input)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bytes]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.messages.append((kw["partition"], value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def bench_stage(topo: config.Topology, pcap: Path) -> tuple[float, int, float, int]:
    """The two agents' cores without Kafka or Faust, on the edge's batches: ConnectionStage.take
    (seconds, packet records), then RollupStage.add_batch on the rollup-input messages the connection
    agent would send of its records (seconds, connection records)."""
    keep = _Keep()
    edge = Edge(keep, "packets", 8, gate(topo), "bench")
    edge.run([pcap])
    stage = ConnectionStage(topo, warmup_s=0)
    records: list[Any] = []
    waiting: list[Any] = []
    t0 = time.perf_counter()
    for p, v in keep.messages:  # as the agent: take each message, build a checkpoint's records together
        waiting += stage.take(p, v, None)[0]
        stage.ackable(p)
        if len(waiting) >= FLUSH_RECORDS:
            records += stage.records(waiting)
            waiting = []
    records += stage.records(waiting)
    stage_s = time.perf_counter() - t0
    bucket_s = topo.window.size_s
    pending: dict[int, list[bytes]] = {}
    for rec in records:
        pending.setdefault(bucket_of(rec, bucket_s), []).append(dumps(rec))
    inputs = list(rollup_batches(pending))
    rollup, table = RollupStage(bucket_s), {}  # a dict for the Faust table
    t0 = time.perf_counter()
    for offset, (_key, value) in enumerate(inputs):
        rollup.add_batch(0, value, table, offset)
        rollup.take_dirty()
    return stage_s, edge.stats.sent, time.perf_counter() - t0, len(records)


TRIVIAL = '''
import logging, sys, faust
from faust.worker import Worker
from rstscope.codecs.packet import decode
bootstrap, topic, app_id, parts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
app = faust.App(app_id, broker="kafka://" + bootstrap, store="memory://", value_serializer="raw",
                key_serializer="raw", web_enabled=False, broker_session_timeout=6, broker_commit_interval=0.5,
                topic_partitions=parts)
src = app.topic(topic, key_type=bytes, value_type=bytes, partitions=parts)
@app.agent(src)
async def decode_only(stream):
    async for value in stream:
        try:
            decode(value)
        except Exception:  # the warm-up message
            pass
class W(Worker):
    def _setup_logging(self):
        super()._setup_logging()
        logging.getLogger().setLevel("WARNING")  # the same fix as rstscope worker: no debug records
W(app, loglevel="warning", quiet=True).execute_from_commandline()
'''


def committed(reader: Consumer, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch on a consumer that never joins the group: polling
    AdminClient.list_consumer_group_offsets ten times a second crashed librdkafka 2.x here)."""
    from confluent_kafka import KafkaException

    try:
        res = reader.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    except KafkaException:  # the group coordinator is still loading: nothing committed yet
        return {}
    return {tp.partition: tp.offset for tp in res if tp.offset >= 0}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-ends"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used: unlike wall time, it hardly moves
    when other work shares this machine's 2 cores (the broker, a noisy neighbour)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def consumer_pid(proc: subprocess.Popen[bytes], cmd: list[str]) -> int:
    """The consumer's process: the command's own, or py-spy's child when py-spy runs it."""
    if cmd[0] != "py-spy":
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(children[0]) if children else proc.pid


STALL_S = 30.0  # no commit moved this long, with messages left: the consumer stalled


class Stalled(TimeoutError):
    """A consumer stopped committing before the end of its topic."""


def time_consumer(cmd: list[str], bootstrap: str, group: str, topic: str, log: Path,
                  cum: dict[int, list[int]] | None = None) -> tuple[float, int, float]:
    """Seconds from the group's first commit to the commit that reaches the end of the topic, the
    messages (with ``cum``: the packet records) committed in between, and the consumer's CPU seconds
    over the same span (under py-spy: the worker's, py-spy's child, slowed by the sampling)."""
    ends = end_offsets(bootstrap, topic)
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)  # data dirs: tmp
    try:
        first = None
        at_first = 0
        cpu0, pid = 0.0, proc.pid
        deadline = time.monotonic() + 600
        last, moved = None, time.monotonic()
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            c = committed(reader, topic, len(ends))
            now = time.monotonic()
            if c != last:
                last, moved = c, now
            elif first is not None and now - moved > STALL_S:
                behind = {p: ends[p] - c.get(p, 0) for p in ends if c.get(p, 0) != ends[p]}
                raise Stalled(f"{cmd[0]}: no commit moved for {STALL_S:g} s; messages behind the end per "
                              f"partition: {behind}; log: {log}")
            if c and first is None:
                first = now
                pid = consumer_pid(proc, cmd)
                cpu0 = cpu_seconds(pid)
                at_first = sum(cum[p][o] for p, o in c.items()) if cum else sum(c.values())
            if c == ends:
                assert first is not None
                total = sum(cum[p][o] for p, o in ends.items()) if cum else sum(ends.values())
                cpu = cpu_seconds(pid) - cpu0
                return now - first, total - at_first, cpu
            time.sleep(0.1)
        raise TimeoutError(f"{cmd[0]} did not reach the end offsets: {log}")
    finally:
        reader.close()
        if cmd[0] == "py-spy":
            proc.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        else:
            proc.terminate()
        proc.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--connections", type=int, default=25000)
    ap.add_argument("--profile", type=Path, default=None, metavar="FILE",
                    help="record the worker (with --only edge: this process during the edge's runs) with py-spy "
                         "into FILE (collapsed stacks)")
    ap.add_argument("--only", choices=["edge"], default=None,
                    help="edge: only the edge vs the raw producer (no worker, trivial agent or in-process stage)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --only edge: rounds of edge then raw, each on the same broker; medians printed")
    args = ap.parse_args()
    with bench_dir() as tmp, local_broker(args.bootstrap, tmp) as bootstrap:
        if args.only == "edge":
            run_edge(bootstrap, args.connections, tmp, args.rounds, args.profile)
        else:
            run(bootstrap, args.connections, tmp, args.profile)
    return 0


def _prepare(bootstrap: str, n: int, tmp: Path) -> tuple[str, Path, config.Topology, str, Path]:
    """Topics for one bench run (the pipeline's and a raw one), the synthetic capture, and a warmed-up
    broker (its first idempotent producer waits for its coordinator: not part of any timing)."""
    try:  # the in-process benches run with the collector as `rstscope edge` and `rstscope worker` set it
        from rstscope.gc_policy import for_long_runs
    except ImportError:  # a tree from before it
        pass
    else:
        for_long_runs()
    tag = f"bench{uuid.uuid4().hex[:6]}"
    topo_path = topology_file(tmp, tag)
    topo = config.load(topo_path)
    apply(bootstrap, all_specs(topo, f"{tag}-app"))
    raw_topic = f"{tag}.raw"
    from confluent_kafka.admin import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(raw_topic, 8, 1)])[raw_topic].result(30)
    pcap = tmp / "synth.pcap"
    frames = synth_pcap(pcap, n)
    print(f"input: {frames} frames, {n} connections, {pcap.stat().st_size / 1e6:.1f} MB; broker {bootstrap}")
    warm = Producer({**DEFAULT_CONF, "bootstrap.servers": bootstrap})
    warm.produce(raw_topic, b"warm-up")
    warm.flush(60)
    return tag, topo_path, topo, raw_topic, pcap


def run_edge(bootstrap: str, n: int, tmp: Path, rounds: int, profile: Path | None = None) -> dict[str, float]:
    """The edge vs the raw producer alone, ``rounds`` times in turn (same topics: each round appends);
    print each round and the medians; return the medians (records/s) and their ratio."""
    import statistics

    _tag, _topo_path, topo, raw_topic, pcap = _prepare(bootstrap, n, tmp)
    edge_r, raw_r, ratios = [], [], []
    for i in range(rounds):
        spy = None
        if profile is not None:  # this process, during the edge's run only (one file per round)
            spy = subprocess.Popen(["py-spy", "record", "-r", "250", "-f", "raw", "--pid", str(os.getpid()), "-o",
                                    f"{profile}.{i + 1}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # py-spy attaches
        edge_s, edge_n = bench_edge(bootstrap, topo, pcap)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait(60)
        raw_s, raw_n = bench_raw(bootstrap, raw_topic, pcap, topo)
        edge_r.append(edge_n / edge_s)
        raw_r.append(raw_n / raw_s)
        ratios.append(edge_r[-1] / raw_r[-1])
        print(f"round {i + 1}: edge {edge_r[-1]:,.0f} records/s, raw {raw_r[-1]:,.0f} records/s, "
              f"{ratios[-1]:.2f} x raw", flush=True)
    med = {"edge": statistics.median(edge_r), "raw": statistics.median(raw_r), "ratio": statistics.median(ratios)}
    print(f"median of {rounds}: edge {med['edge']:,.0f} records/s, raw {med['raw']:,.0f} records/s, "
          f"ratio {med['ratio']:.2f} x raw (median of the rounds' ratios)")
    return med


@contextlib.contextmanager
def bench_dir(prefix: str = "rstscope-bench-") -> Iterator[Path]:
    """A temp dir for one bench run (broker data, logs, the capture), removed afterwards: a bench's
    broker writes gigabytes. RSTSCOPE_KEEP_WORK=1 keeps it (its path is printed)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if os.environ.get("RSTSCOPE_KEEP_WORK"):
            print(f"bench: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_broker(bootstrap: str | None, tmp: Path) -> Iterator[str]:
    """``bootstrap`` if given, else a one-node local broker in ``tmp`` for the duration."""
    if bootstrap:
        yield bootstrap
        return
    from rstscope.kafka import local

    started = tmp / "kafka"
    try:
        yield local.start(1, started)
    finally:
        local.stop(started)


def run(bootstrap: str, n: int, tmp: Path, profile: Path | None = None) -> dict[str, float]:
    """Run the three benches; print their table; return the figures (records/s) for bench_all.py."""
    tag, topo_path, topo, raw_topic, pcap = _prepare(bootstrap, n, tmp)
    edge_s, edge_n = bench_edge(bootstrap, topo, pcap)
    raw_s, raw_n = bench_raw(bootstrap, raw_topic, pcap, topo)
    stage_s, stage_n, rollup_s, rollup_n = bench_stage(topo, pcap)
    packets = topo.topics["packets"].name
    worker_cmd = [sys.executable, "-m", "rstscope.cli", "worker", "--bootstrap", bootstrap, "--topology",
                  str(topo_path), "--app-id", f"{tag}-app", "--workers-dir", str(tmp / "w"),
                  "--session-timeout", "6", "--commit-interval", "0.5", "--loglevel", "warning"]
    if profile is not None:
        worker_cmd = ["py-spy", "record", "-r", "250", "-f", "raw", "-o", str(profile), "--", *worker_cmd]
    # The trivial agent first: Faust's default consumer (auto acks) here sometimes stops committing all
    # partitions but one, idle and without an error, when other Faust apps consumed from the broker
    # before it (seen with 400,000 messages after one app, 100,000 after three); it never did as the
    # broker's first. rstscope's worker (manual acks) has not shown it, here or in the Kafka tests.
    trivial_cmd = [sys.executable, "-c", TRIVIAL, bootstrap, raw_topic, f"{tag}-trivial", "8"]
    read_through(bootstrap, raw_topic)  # (records_at below reads the packets topic through likewise)
    trivial_s, trivial_n, trivial_cpu = time_consumer(trivial_cmd, bootstrap, f"{tag}-trivial", raw_topic,
                                                      tmp / "trivial.log")
    cum = records_at(bootstrap, packets)
    worker_s, worker_n, worker_cpu = time_consumer(worker_cmd, bootstrap, f"{tag}-app", packets,
                                                   tmp / "worker.log", cum)
    total = sum(end_offsets(bootstrap, packets).values())  # batches + watermarks
    worker_rate, trivial_rate = worker_n / worker_s, trivial_n / trivial_s

    rows: list[tuple[str, float, Any]] = [
        ("edge (rstscope edge loop)", edge_n / edge_s, f"{edge_n / edge_s / (raw_n / raw_s):.2f} x raw"),
        ("raw confluent-kafka producer", raw_n / raw_s, "1.00"),
        ("worker (rstscope worker, 2 agents)", worker_rate, f"{worker_rate / trivial_rate:.2f} x trivial"),
        ("trivial Faust agent (1 record/message)", trivial_rate, "1.00"),
        ("ConnectionStage in-process", stage_n / stage_s, "(no Kafka)"),
        ("RollupStage.add_batch in-process", rollup_n / rollup_s, "(connection records/s, no Kafka)"),
    ]
    print(f"\n{'path':40} {'records/s':>12}  ratio")
    for name, rate, ratio in rows:
        print(f"{name:40} {rate:12,.0f}  {ratio}")
    print(f"\n(edge {edge_n} records in {edge_s:.2f}s; raw {raw_n} in {raw_s:.2f}s; {total} messages on the topic; "
          f"worker {worker_n} records in {worker_s:.2f}s; trivial {trivial_n} in {trivial_s:.2f}s; times of the "
          f"consumers are first to last commit, 0.5 s commit interval)")
    # CPU per record: the figure to compare two trees by on a shared machine (wall time moves with the load)
    worker_us, trivial_us = worker_cpu / worker_n * 1e6, trivial_cpu / trivial_n * 1e6
    print(f"CPU per packet record over the same spans: worker {worker_us:.1f} us, trivial agent {trivial_us:.1f} us "
          f"({trivial_us / worker_us:.2f} x; the worker at full CPU: {1e6 / worker_us:,.0f} records/s)")
    return {"edge": edge_n / edge_s, "raw": raw_n / raw_s, "worker": worker_rate, "trivial": trivial_rate,
            "stage": stage_n / stage_s, "rollup": rollup_n / rollup_s, "worker_cpu_us": worker_us,
            "trivial_cpu_us": trivial_us}


if __name__ == "__main__":
    raise SystemExit(main())
