"""The worker's memory per open connection and its result latency, on a real broker (issue 8).

    python bench/bench_worker_live.py memory [--connections 1000000] [--packets 1]
    python bench/bench_worker_live.py latency [--rate 2000] [--seconds 60]

memory: N connections that stay open (a SYN, optionally an ACK and a data segment, all within a few
seconds of event time and no watermark after them) go to the packets topic; one `rstscope worker`
consumes them all. Reported: the worker's RSS growth per open connection (VmRSS after all are held,
minus VmRSS when it was ready and idle), next to the same figure for `ConnectionStage` alone
in-process (tracemalloc) so the share of Faust's held messages is visible.

latency: connections are generated in real time (event time = wall clock) at --rate packets/s with
watermarks every 0.5 s, as a live edge does; half end with a RST, half go silent (timeouts). For every
record on the connections topic: broker append time (LogAppendTime) minus the record's last packet
time. The target is idle timeout + 2 s; printed: median, p99, max.

Without --bootstrap (and $KAFKA_BOOTSTRAP_SERVERS) a local broker is started in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer  # noqa: E402

from rstscope import config  # noqa: E402
from rstscope.codecs.jsonl import loads  # noqa: E402
from rstscope.codecs.packet import Watermark, encode_packet, encode_watermark, packet_key  # noqa: E402
from rstscope.edge.producer import DEFAULT_CONF  # noqa: E402
from rstscope.packet import TH_ACK, TH_PSH, TH_RST, TH_SYN, PacketRecord  # noqa: E402
from rstscope.streams.connection_agent import ConnectionStage  # noqa: E402
from rstscope.streams.topics import all_specs, apply  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import local_broker, topology_file  # noqa: E402

SERVER = bytes([192, 0, 2, 1])


def client_packets(i: int, t: float, k: int, end: int | None = None) -> list[PacketRecord]:
    """The first k client packets of connection i starting at t (SYN, ACK, PSH+ACK), then `end` flags."""
    src = bytes([10, (i >> 16) & 255, (i >> 8) & 255, i & 255])
    sport = 1024 + (i * 7) % 60000
    isn = (i * 2654435761) & 0xFFFFFFFF
    specs = [(TH_SYN, isn, 0, 0, 20), (TH_ACK, isn + 1, 5001, 0, 0), (TH_PSH | TH_ACK, isn + 1, 5001, 100, 0)][:k]
    if end is not None:
        specs.append((end, isn + 1 + (100 if k >= 3 else 0), 0, 0, 0))
    return [PacketRecord(t + j * 0.001, 4, src, SERVER, sport, 443, f, s, a, 100 + j, 64, 64240, pl, ol)
            for j, (f, s, a, pl, ol) in enumerate(specs)]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_worker(bootstrap: str, topo_path: Path, app_id: str, tmp: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"worker-{app_id}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rstscope.cli", "worker", "--bootstrap", bootstrap,
                                 "--topology", str(topo_path), "--app-id", app_id, "--workers-dir",
                                 str(tmp / "w"), "--session-timeout", "6"], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    deadline = time.monotonic() + 120
    while "Worker]: Ready" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return proc, log


def held(log: Path) -> int:
    import re

    found = re.findall(r"held=(\d+)", log.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def stage_bytes(topo: config.Topology, n: int, k: int) -> float:
    """ConnectionStage alone: traced bytes per open connection (handles are ints, not Faust events)."""
    stage = ConnectionStage(topo)
    values = [encode_packet(p) for i in range(min(n, 200_000)) for p in client_packets(i, T0 + i * 4e-6, k)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for off, v in enumerate(values):
        stage.feed(off % 8, v, off)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / sum(len(st.table.open) for st in stage.parts.values())


T0 = 1_700_000_100.0


def memory(bootstrap: str, tmp: Path, n: int, k: int) -> None:
    tag = f"mem{uuid.uuid4().hex[:6]}"
    topo_path = topology_file(tmp, tag)
    topo = config.load(topo_path)
    apply(bootstrap, all_specs(topo, f"{tag}-app"))
    proc, log = start_worker(bootstrap, topo_path, f"{tag}-app", tmp)
    try:
        time.sleep(3)
        idle = rss(proc.pid)
        prod = Producer({**DEFAULT_CONF, "bootstrap.servers": bootstrap})
        topic = topo.topics["packets"].name
        sent = 0
        for i in range(n):  # all within 4 s of event time: nothing times out, nothing is finalized
            for p in client_packets(i, T0 + i * (4.0 / n), k):
                while True:
                    try:
                        prod.produce(topic, encode_packet(p), packet_key(p))
                        break
                    except BufferError:
                        prod.poll(0.1)
                sent += 1
            if not i % 10000:
                prod.poll(0)
        assert prod.flush(120) == 0
        t0 = time.monotonic()
        while held(log) < sent:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - t0 < 3600, f"held {held(log)} of {sent}"
            time.sleep(2)
        full = rss(proc.pid)
        per_conn = (full - idle) / n
        in_proc = stage_bytes(topo, n, k)
        print(f"open connections {n:,} ({k} packet(s) each, {sent:,} messages held); worker RSS idle "
              f"{idle / 2**20:.0f} MiB, all held {full / 2**20:.0f} MiB: {per_conn:,.0f} bytes per open connection "
              f"(target 500); ConnectionStage alone (tracemalloc, no Faust): {in_proc:,.0f} bytes")
    finally:
        proc.terminate()
        proc.wait(60)


def latency(bootstrap: str, tmp: Path, rate: float, seconds: float) -> None:
    tag = f"lat{uuid.uuid4().hex[:6]}"
    topo_path = topology_file(tmp, tag)
    topo = config.load(topo_path)
    apply(bootstrap, all_specs(topo, f"{tag}-app"))
    idle_s = topo.window.idle_timeout_s
    proc, log = start_worker(bootstrap, topo_path, f"{tag}-app", tmp)
    conns_topic = topo.topics["connections"].name
    stop = threading.Event()
    got: list[tuple[float, float]] = []  # (append time, last packet time)

    def consume() -> None:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                      "auto.offset.reset": "earliest"})
        c.subscribe([conns_topic])
        while not stop.is_set():
            for m in c.consume(500, timeout=0.2):
                if m.error() is None:
                    got.append((m.timestamp()[1] / 1000.0, loads(m.value())["last_ts"]))
        c.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    prod = Producer({**DEFAULT_CONF, "bootstrap.servers": bootstrap})
    topic = topo.topics["packets"].name
    parts = topo.topics["packets"].partitions
    per_conn = 3.5  # packets per connection on average (3, plus a RST for half of them)
    start = time.time()
    next_wm = start
    i = sent = 0
    try:
        while time.time() - start < seconds:
            now = time.time()
            due = int((now - start) * rate / per_conn)
            while i < due:
                end = TH_RST if i % 2 else None
                for p in client_packets(i, now, 3, end):
                    prod.produce(topic, encode_packet(p), packet_key(p))
                    sent += 1
                i += 1
            if now >= next_wm:  # a live edge's promise: nothing older than now follows
                wm = encode_watermark(Watermark(now, "bench", False))
                for part in range(parts):
                    prod.produce(topic, wm, partition=part)
                next_wm = now + 0.5
            prod.poll(0)
            time.sleep(0.005)
        # keep the clock going until every connection can have timed out
        until = time.time() + idle_s + 5
        while time.time() < until:
            wm = encode_watermark(Watermark(time.time(), "bench", False))
            for part in range(parts):
                prod.produce(topic, wm, partition=part)
            prod.poll(0)
            time.sleep(0.5)
        prod.flush(30)
        time.sleep(3)
    finally:
        stop.set()
        reader.join(10)
        proc.terminate()
        proc.wait(60)
    lat = sorted(t - last for t, last in got)
    if not lat:
        raise SystemExit(f"no records on {conns_topic}: {log}")
    q = statistics.quantiles(lat, n=100)
    print(f"{i:,} connections at {rate:,.0f} packets/s for {seconds:.0f} s ({sent:,} packets); {len(lat):,} records. "
          f"Result latency after the last packet (target idle {idle_s} s + 2 s = {idle_s + 2} s): "
          f"median {statistics.median(lat):.2f} s, p99 {q[98]:.2f} s, max {lat[-1]:.2f} s; "
          f"{sum(x > idle_s + 2 for x in lat)} records over the target")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("memory", "latency"))
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--connections", type=int, default=1_000_000)
    ap.add_argument("--packets", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rstscope-bench-"))
    with local_broker(args.bootstrap, tmp) as bootstrap:
        if args.what == "memory":
            memory(bootstrap, tmp, args.connections, args.packets)
        else:
            latency(bootstrap, tmp, args.rate, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
