"""CPU of `rstscope edge` at a measured packet rate (docs/edge.md, "Measured CPU").

Run as root: `python tests/edge/bench_edge_cpu.py`. Starts a local broker and a netns pair, floods
SYNs with hping3 for 10 s per mode and reads the edge's CPU time with psutil. Not a pytest test.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from rstscope.kafka import local
from tests.edge.test_edge_realnet import _env, topology_file

C, S, CDEV, SDEV = "cpuC", "cpuS", "vcpuc", "vcpus"
SERVER = "10.95.0.2"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def rules(*args: str) -> None:
    sh("ip", "netns", "exec", S, sys.executable, "-m", "rstscope.cli", "edge", "rules", "--nflog-group", "40",
       "--family", "4", *args)


def measure(bs: str, topo: Path, tmp: Path, name: str, args: list[str], seconds: float = 10) -> None:
    log = tmp / "edge.log"
    with open(log, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "rstscope.cli", "edge", *args, "--netns", S, "--bootstrap", bs,
                              "--topology", str(topo), "--json"], stdout=subprocess.PIPE, stderr=f, env=_env())
    while "capturing" not in log.read_text():
        assert p.poll() is None, log.read_text()
        time.sleep(0.1)
    time.sleep(1)
    proc = psutil.Process(p.pid)
    c0, t0 = proc.cpu_times(), time.monotonic()
    hp = subprocess.Popen(["ip", "netns", "exec", C, "hping3", "-q", "-S", "-p", "81", "-i", "u10", SERVER],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    hp.send_signal(signal.SIGINT)
    hp.wait()
    time.sleep(0.5)
    c1, dt = proc.cpu_times(), time.monotonic() - t0
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    st = json.loads(out.decode().splitlines()[-1])
    cpu = c1.user + c1.system - c0.user - c0.system
    print(f"{name}: {dt:.1f}s, read {st['read']} frames ({st['read'] / dt:,.0f}/s), sent {st['sent']}, "
          f"cpu {cpu:.2f}s = {100 * cpu / dt:.1f}% of a core; dropped {st['dropped']}", flush=True)


def main() -> None:
    for ns in (C, S):
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "netns", "add", C)
    sh("ip", "netns", "add", S)
    sh("ip", "link", "add", CDEV, "netns", C, "type", "veth", "peer", "name", SDEV, "netns", S)
    sh("ip", "-n", C, "addr", "add", "10.95.0.1/24", "dev", CDEV)
    sh("ip", "-n", S, "addr", "add", f"{SERVER}/24", "dev", SDEV)
    for ns, dev in ((C, CDEV), (S, SDEV)):
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    tmp = Path(tempfile.mkdtemp())
    try:
        with local.running_cluster(1, tmp, die_with_parent=True) as bs:
            tag = f"c{uuid.uuid4().hex[:6]}"
            topo = topology_file(tmp, tag)
            sh(sys.executable, "-m", "rstscope.cli", "topics", "apply", "--bootstrap", bs, "--topology", str(topo),
               "--app-id", tag)
            live = ["--interface", SDEV, "--server-ip", SERVER]
            measure(bs, topo, tmp, "interface p=1e-4", [*live, "--sample", "0.0001"])
            measure(bs, topo, tmp, "interface p=1", [*live, "--sample", "1"])
            for prob in ("0.0001", "1"):
                rules("--probability", prob, "--apply")
                try:
                    measure(bs, topo, tmp, f"nflog kernel p={prob}", ["--nflog-group", "40"])
                finally:
                    rules("--remove")
    finally:
        for ns in (C, S):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
