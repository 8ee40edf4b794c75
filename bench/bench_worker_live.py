"""The worker's memory per held connection and its result latency, on a real broker (issue 8).

    python bench/bench_worker_live.py memory [--connections 1000000] [--packets 1]
    python bench/bench_worker_live.py latency [--rate 2000] [--seconds 60] [--mode window|idle]

memory: N connections that have not ended (a SYN, optionally an ACK and a data segment, all within a few
seconds of event time and no watermark after them) go to the packets topic; one `rstscope worker`
consumes them all and holds them (SPEC 4: decided when their window closes). Reported: the worker's RSS
growth per held connection (VmRSS after all are held, minus VmRSS when it was ready and idle), next to
the same figure for `ConnectionStage` alone in-process (tracemalloc) so the share of Faust is visible.

latency: connections are generated in real time at --rate packets/s with watermarks every 0.5 s, as a
live edge does; half end with a RST, half go silent. Event time is the wall clock shifted so that a
15-minute window closes in the middle of the run. For every record on the connections topic, by broker
append time (LogAppendTime):
- window mode (the default, the blog's method): an ended (RST) connection comes out once the event time
  passes its last packet by grace_s (target: grace_s + 2 s after its last packet); a silent one is held
  until its window closes (target: 2 s after the window's end); those of the window still open when the
  run stops are decided by the end-of-input watermark the bench then sends (as `rstscope edge` does).
- idle mode (`--mode idle`): a silent connection times out idle_s after its last packet (target idle_s +
  2 s), an ended one after grace_s.
Printed: median, p99, max per kind.

Without --bootstrap (and $KAFKA_BOOTSTRAP_SERVERS) a local broker is started in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer  # noqa: E402

from rstscope import config  # noqa: E402
from rstscope.codecs.jsonl import loads  # noqa: E402
from rstscope.codecs.packet import (  # noqa: E402
    Watermark,
    encode_batch,
    encode_packet,
    encode_watermark,
    packet_fields,
    packet_key,
    partition_of,
)
from rstscope.edge.producer import DEFAULT_CONF  # noqa: E402
from rstscope.packet import TH_ACK, TH_PSH, TH_RST, TH_SYN, PacketRecord  # noqa: E402
from rstscope.streams.connection_agent import ConnectionStage  # noqa: E402
from rstscope.streams.topics import all_specs, apply  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import bench_dir, local_broker, topology_file  # noqa: E402

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

    found = re.findall(r"'packets': (\d+)", log.read_text(errors="replace"))  # packets in (all held)
    return int(found[-1]) if found else 0


def batches(packets: list[PacketRecord], partitions: int, size: int = 500) -> list[tuple[int, bytes]]:
    """(partition, message) as `rstscope edge` sends them: per partition, up to ``size`` records a message."""
    parts: dict[int, list[list[Any]]] = {}
    out = []
    for p in packets:
        q = partition_of(p.packed_key, partitions)
        recs = parts.setdefault(q, [])
        recs.append(packet_fields(p))
        if len(recs) >= size:
            out.append((q, encode_batch("bench", recs)))
            parts[q] = []
    out += [(q, encode_batch("bench", recs)) for q, recs in parts.items() if recs]
    return out


def stage_bytes(topo: config.Topology, n: int, k: int) -> float:
    """ConnectionStage alone: traced bytes per held connection (handles are ints, not Faust events)."""
    stage = ConnectionStage(topo, warmup_s=0)
    values = batches([p for i in range(min(n, 200_000)) for p in client_packets(i, T0 + i * 4e-6, k)], 8)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for off, (part, v) in enumerate(values):
        stage.feed(part, v, off)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / sum(len(st.table.open) for st in stage.parts.values())  # not ended: all held


T0 = 1_700_000_100.0


def memory(bootstrap: str, tmp: Path, n: int, k: int) -> dict[str, float]:
    """Worker RSS growth per held connection (and the stage's own, traced); printed and returned."""
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
        parts = topo.topics["packets"].partitions
        for lo in range(0, n, 100_000):  # all within 4 s of event time, none ended: held until their window closes
            chunk = [p for i in range(lo, min(n, lo + 100_000)) for p in client_packets(i, T0 + i * (4.0 / n), k)]
            for part, value in batches(chunk, parts):
                while True:
                    try:
                        prod.produce(topic, value, None, partition=part)
                        break
                    except BufferError:
                        prod.poll(0.1)
            sent += len(chunk)
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
        print(f"held connections {n:,} (not ended, {k} packet(s) each, {sent:,} packets held); worker RSS idle "
              f"{idle / 2**20:.0f} MiB, all held {full / 2**20:.0f} MiB: {per_conn:,.0f} bytes per held connection "
              f"(target 500); ConnectionStage alone (tracemalloc, no Faust): {in_proc:,.0f} bytes")
        return {"per_connection": per_conn, "stage_per_connection": in_proc, "idle_mib": idle / 2**20,
                "held_mib": full / 2**20}
    finally:
        proc.terminate()
        proc.wait(60)


def _window_topology(tmp: Path, tag: str, mode: str) -> Path:
    """The bench's topology with the given window mode."""
    import yaml

    path = topology_file(tmp, tag)
    raw = yaml.safe_load(path.read_text())
    raw["window"]["mode"] = mode
    path.write_text(yaml.safe_dump(raw))
    return path


def _quantiles(xs: list[float]) -> str:
    if not xs:
        return "none"
    xs = sorted(xs)
    p99 = statistics.quantiles(xs, n=100)[98] if len(xs) > 1 else xs[0]
    return f"median {statistics.median(xs):.2f} s, p99 {p99:.2f} s, max {xs[-1]:.2f} s ({len(xs):,} records)"


def latency(bootstrap: str, tmp: Path, rate: float, seconds: float, mode: str) -> None:
    tag = f"lat{uuid.uuid4().hex[:6]}"
    topo_path = _window_topology(tmp, tag, mode)
    topo = config.load(topo_path)
    w = topo.window
    apply(bootstrap, all_specs(topo, f"{tag}-app"))
    proc, log = start_worker(bootstrap, topo_path, f"{tag}-app", tmp)
    conns_topic = topo.topics["connections"].name
    stop = threading.Event()
    got: list[tuple[float, dict[str, Any]]] = []  # (append time in event time, record)
    start = time.time()
    # event time = wall clock + shift: a window boundary falls in the middle of the run
    boundary = (start // w.size_s + 1) * w.size_s
    shift = boundary - (start + seconds / 2)

    def consume() -> None:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                      "auto.offset.reset": "earliest"})
        c.subscribe([conns_topic])
        while not stop.is_set():
            for m in c.consume(500, timeout=0.2):
                if m.error() is None:
                    got.append((m.timestamp()[1] / 1000.0 + shift, loads(m.value() or b"")))
        c.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    prod = Producer({**DEFAULT_CONF, "bootstrap.servers": bootstrap})
    topic = topo.topics["packets"].name
    parts = topo.topics["packets"].partitions

    def watermark(eof: bool = False) -> None:
        wm = encode_watermark(Watermark(time.time() + shift, "bench", eof))
        for part in range(parts):
            prod.produce(topic, wm, partition=part)

    per_conn = 3.5  # packets per connection on average (3, plus a RST for half of them)
    next_wm = start
    i = sent = 0
    eof_at = 0.0
    try:
        while time.time() - start < seconds:
            now = time.time()
            due = int((now - start) * rate / per_conn)
            while i < due:
                end = TH_RST if i % 2 else None
                for p in client_packets(i, now + shift, 3, end):
                    prod.produce(topic, encode_packet(p, edge="bench"), packet_key(p))
                    sent += 1
                i += 1
            if now >= next_wm:  # a live edge's promise: nothing older than now follows
                watermark()
                next_wm = now + 0.5
            prod.poll(0)
            time.sleep(0.005)
        # keep the clock going until every ended connection is past its grace period (idle mode: every
        # silent one past idle_s), then end the input as an edge does (eof): the rest is decided
        until = time.time() + max(w.grace_s, w.idle_s if mode == "idle" else 0.0) + 5
        while time.time() < until:
            watermark()
            prod.poll(0)
            time.sleep(0.5)
        eof_at = time.time() + shift
        watermark(eof=True)
        prod.flush(30)
        time.sleep(5)
    finally:
        stop.set()
        reader.join(10)
        proc.terminate()
        proc.wait(60)
    if not got:
        raise SystemExit(f"no records on {conns_topic}: {log}")
    ended = [t - r["last_ts"] for t, r in got if "reset" in r["tags"]]
    silent = [(t, r) for t, r in got if "timeout" in r["tags"]]
    print(f"{mode} mode: {i:,} connections at {rate:,.0f} packets/s for {seconds:.0f} s ({sent:,} packets), "
          f"a window closing {seconds / 2:.0f} s into the run; {len(got):,} records.")
    print(f"  ended (RST), after the last packet (target grace {w.grace_s:g} s + 2 s): {_quantiles(ended)}; "
          f"{sum(x > w.grace_s + 2 for x in ended)} over the target")
    if mode == "idle":
        quiet = [t - r["last_ts"] for t, r in silent]
        print(f"  silent (timeouts), after the last packet (target idle {w.idle_s:g} s + 2 s): {_quantiles(quiet)}; "
              f"{sum(x > w.idle_s + 2 for x in quiet)} over the target")
        return
    closed = [t - (r["window_start"] + w.size_s) for t, r in silent if r["window_start"] + w.size_s <= eof_at]
    at_eof = [r for _t, r in silent if r["window_start"] + w.size_s > eof_at]
    print(f"  silent (held), after their window's end (target 2 s): {_quantiles(closed)}; "
          f"{sum(x > 2 for x in closed)} over the target")
    print(f"  silent of the window still open, decided by the end-of-input watermark: {len(at_eof):,} timeouts "
          f"(those quiet < {w.timeout_s:g} s before it are incomplete, not emitted)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("memory", "latency"))
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    ap.add_argument("--connections", type=int, default=1_000_000)
    ap.add_argument("--packets", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--mode", choices=config.MODES, default=config.MODE_WINDOW, help="latency: the window mode")
    args = ap.parse_args()
    with bench_dir() as tmp, local_broker(args.bootstrap, tmp) as bootstrap:
        if args.what == "memory":
            memory(bootstrap, tmp, args.connections, args.packets)
        else:
            latency(bootstrap, tmp, args.rate, args.seconds, args.mode)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
