"""The edge on a real kernel: rules installed in a server network namespace, real connections from a
client namespace, `rstscope edge --nflog-group` / `--interface` publishing to the real broker.

The records on the packets topic must be exactly the first <= 10 client->server packets of every
connection, as tcpdump saw them on the server's interface at the same time (kernel sampling at
probability 1), and at probability 0.5 the sampled share of 2,000 connections lies within binomial
bounds. Rules are removed at the end and none may be left.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from rstscope import config
from rstscope.capture.files import read_frames
from rstscope.codecs.packet import Watermark, decode_message
from rstscope.decode import decode_frame
from rstscope.packet import TH_ACK, TH_RST, TH_SYN, PacketRecord

pytestmark = pytest.mark.realnet

REPO = Path(__file__).resolve().parents[2]
NET = "10.96.0"
CLIENT_IP, SERVER_IP = f"{NET}.1", f"{NET}.2"
NGINX_CONF = """daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 128; }}
http {{ access_log off; server {{ listen {ip}:80; location / {{ return 200 "edge\\n"; }} }} }}
"""
CLIENT = r"""
import socket, struct, subprocess, time
S = "SERVER"
def conn(n_sends, abort):
    s = socket.create_connection((S, 80)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(n_sends):
        s.send(b"X-%d: y\r\n" % i); time.sleep(0.02)
    if abort:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
for _ in range(3):
    subprocess.run(["curl", "-s", "-o", "/dev/null", "http://%s/" % S], check=True)
conn(0, True); conn(1, True); conn(3, True)
conn(14, True)   # more than 10 client packets: only the first 10 may leave the edge
s = socket.socket(); s.settimeout(0.5)
try:
    s.connect((S, 81))  # closed port: SYN -> RST
except OSError:
    pass
s.close()
""".replace("SERVER", SERVER_IP)


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def _env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return e


def _need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, iptables, NFLOG)")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    try:
        import pcapy  # noqa: F401
    except ImportError:
        pytest.skip("needs pcapy-ng (pip install pcapy-ng)")


@dataclass
class Pair:
    client: str
    server: str
    sdev: str
    tmp: Path

    def sx(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", self.server, *cmd, check=check)

    def cx(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", self.client, *cmd, check=check)

    def rstscope_s(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.server, sys.executable, "-m", "rstscope.cli", *args],
                              capture_output=True, text=True, env=_env(), timeout=60)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    _need("ip", "iptables", "tcpdump", "nginx", "curl")
    tag = f"{os.getpid() % 100000}"
    c, s = f"rsteC{tag}", f"rsteS{tag}"
    cdev, sdev = f"vec{tag}", f"ves{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="rstscope-edge-"))
    nginx: subprocess.Popen[bytes] | None = None
    try:
        _sh("ip", "netns", "add", c)
        _sh("ip", "netns", "add", s)
        _sh("ip", "link", "add", cdev, "netns", c, "type", "veth", "peer", "name", sdev, "netns", s)
        _sh("ip", "-n", c, "addr", "add", f"{CLIENT_IP}/24", "dev", cdev)
        _sh("ip", "-n", s, "addr", "add", f"{SERVER_IP}/24", "dev", sdev)
        for ns, dev in ((c, cdev), (s, sdev)):
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(d=tmp, ip=SERVER_IP))
        nginx = subprocess.Popen(["ip", "netns", "exec", s, "nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p = Pair(c, s, sdev, tmp)
        for _ in range(50):
            if p.cx("curl", "-s", "-o", "/dev/null", "--max-time", "1", f"http://{SERVER_IP}/",
                    check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("nginx did not come up")
        yield p
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for ns in (c, s):
            _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


# -- rules: apply twice, remove, nothing left -------------------------------------------------------


def _ours(p: Pair, group: int) -> str:
    out = p.sx("iptables", "-w", "-t", "mangle", "-S").stdout + p.sx("ip6tables", "-w", "-t", "mangle", "-S").stdout
    return "\n".join(line for line in out.splitlines() if f"RSTSCOPE-{group}" in line)


def test_rules_apply_idempotent_and_remove(pair: Pair) -> None:
    args = ["edge", "rules", "--nflog-group", "31", "--probability", "0.25", "--server-port", "80,443"]
    r = pair.rstscope_s(*args, "--apply")
    assert r.returncode == 0, r.stderr
    first = _ours(pair, 31)
    assert pair.rstscope_s(*args, "--apply").returncode == 0
    assert _ours(pair, 31) == first  # no duplicates
    # 2 families x (chain + 2 rules + jump)
    assert len(first.splitlines()) == 8 and first.count("-j RSTSCOPE-31") == 2, first
    assert "--probability 0.25" in first and "--nflog-size 128" in first
    r = pair.rstscope_s(*args, "--remove")
    assert r.returncode == 0, r.stderr
    assert _ours(pair, 31) == ""


def test_nft_rules_apply_idempotent_and_remove(pair: Pair) -> None:
    if not shutil.which("nft"):
        pytest.skip("needs nft")
    args = ["edge", "rules", "--nft", "--nflog-group", "32", "--probability", "0.5"]
    assert pair.rstscope_s(*args, "--apply").returncode == 0
    assert pair.rstscope_s(*args, "--apply").returncode == 0
    ruleset = pair.sx("nft", "list", "ruleset").stdout
    assert ruleset.count("table inet rstscope_32") == 1 and ruleset.count("log prefix") == 1, ruleset
    assert "ct label set" in ruleset and "numgen random mod 1000000 < 500000" in ruleset
    assert pair.rstscope_s(*args, "--remove").returncode == 0
    assert "rstscope_32" not in pair.sx("nft", "list", "ruleset").stdout


# -- records on the topic == the first <= 10 ingress packets ----------------------------------------


def topology_file(tmp: Path, tag: str) -> Path:
    raw = yaml.safe_load(config.DEFAULT_PATH.read_text())
    for role, t in raw["topics"].items():
        t["name"] = f"{tag}.{role}"
    raw["edges"] = {**raw.get("edges", {}), "idle_s": 3}  # one edge: a short warm-up (docs/streaming.md)
    path = tmp / f"topology-{tag}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def read_packets(bootstrap: str, topic: str) -> list[PacketRecord]:
    from tests.kafka.test_pipeline import read_topic

    out = []
    for _k, value, _p, _o in read_topic(bootstrap, topic):
        m = decode_message(value)
        if not isinstance(m, Watermark):
            assert not m.errors
            out += [pkt for pkt, _geo in m.packets]
    return out


def first_ten(pcap: Path, port: int | None = None) -> list[PacketRecord]:
    """Client->server packets of the capture, at most 10 per connection (a connection starts at a SYN;
    a SYN with a new ISN on the same tuple starts a new one, as in conntrack and the gate)."""
    out: list[PacketRecord] = []
    conns: dict[tuple[bytes, int, bytes, int], list[int]] = {}  # tuple -> [isn, count]
    server = bytes(map(int, SERVER_IP.split(".")))
    for f in read_frames(pcap):
        rec = decode_frame(f.ts, f.linktype, f.data)
        if isinstance(rec, str) or rec.dst != server or (port is not None and rec.dport != port):
            continue
        key = (rec.src, rec.sport, rec.dst, rec.dport)
        c = conns.get(key)
        if rec.flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN and (c is None or c[0] != rec.seq):
            conns[key] = c = [rec.seq, 0]
        if c is None or c[1] >= 10:
            continue
        c[1] += 1
        out.append(rec)
    return out


def _fields(r: PacketRecord) -> tuple[object, ...]:
    return (r.src, r.sport, r.dst, r.dport, r.flags, r.seq, r.ack, r.ipid, r.ttl, r.window, r.payload_len, r.opt_len)


class Edge:
    """`rstscope edge` in the server namespace, with tcpdump beside it."""

    def __init__(self, p: Pair, bootstrap: str, topo: Path, *source: str) -> None:
        self.p = p
        self.pcap = p.tmp / f"{uuid.uuid4().hex[:6]}.pcap"
        self.log = p.tmp / f"edge-{uuid.uuid4().hex[:6]}.log"
        self.td = subprocess.Popen(["ip", "netns", "exec", p.server, "tcpdump", "-i", p.sdev, "-nn", "-U",
                                    "--immediate-mode", "-w", str(self.pcap), "tcp"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        with open(self.log, "wb") as log:
            # the edge runs on the host (where the broker is) and opens its capture in the server namespace
            self.proc = subprocess.Popen([sys.executable, "-m", "rstscope.cli", "edge", *source, "--netns", p.server,
                                          "--bootstrap", bootstrap, "--topology", str(topo),
                                          "--metrics-port", "0", "--metrics-addr", "127.0.0.1", "--json"],
                                         stdout=subprocess.PIPE, stderr=log, env=_env())
        deadline = time.monotonic() + 30
        while "capturing on" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)
        assert self.td.stderr is not None
        self.td.stderr.readline()  # "listening on ..."

    def metrics(self) -> str:
        url = self.log.read_text().split("metrics on ", 1)[1].split()[0]
        return _sh("curl", "-s", "--max-time", "5", url).stdout

    def stop(self) -> tuple[int, str, str]:
        time.sleep(1.0)
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.td.send_signal(signal.SIGINT)
        self.td.wait(10)
        return self.proc.returncode, out.decode(), self.log.read_text()


@pytest.fixture
def topo(pair: Pair, kafka_bootstrap: str) -> tuple[Path, str]:
    tag = f"e{uuid.uuid4().hex[:8]}"
    path = topology_file(pair.tmp, tag)
    r = subprocess.run([sys.executable, "-m", "rstscope.cli", "topics", "apply", "--bootstrap", kafka_bootstrap,
                        "--topology", str(path), "--app-id", tag], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    return path, f"{tag}.packets"


@pytest.mark.kafka
@pytest.mark.parametrize("mode", ["nflog", "interface"])
def test_records_are_first_ten_ingress_packets(pair: Pair, kafka_bootstrap: str, topo: tuple[Path, str],
                                               mode: str) -> None:
    topo_path, topic = topo
    group = 33
    if mode == "nflog":
        r = pair.rstscope_s("edge", "rules", "--nflog-group", str(group), "--probability", "1", "--apply")
        assert r.returncode == 0, r.stderr
        source = ["--nflog-group", str(group)]
    else:
        source = ["--interface", pair.sdev, "--bpf", "tcp", "--server-ip", SERVER_IP, "--sample", "1"]
    try:
        edge = Edge(pair, kafka_bootstrap, topo_path, *source)
        t0 = time.monotonic()
        pair.cx(sys.executable, "-c", CLIENT)
        if shutil.which("nmap"):
            pair.cx("nmap", "-sS", "-n", "-Pn", "-p", "80,81,443", "--max-retries", "0", SERVER_IP)
        metrics = edge.metrics()
        code, out, err = edge.stop()
        traffic_s = time.monotonic() - t0
    finally:
        if mode == "nflog":
            assert pair.rstscope_s("edge", "rules", "--nflog-group", str(group), "--remove").returncode == 0
    assert _ours(pair, group) == ""
    assert code == 0, err
    assert "rstscope_edge_packets_sent_total" in metrics and "rstscope_edge_queue_depth" in metrics
    assert "edge: read" in err and "delivery failures 0" in err and "lost 0" in err
    expected = first_ten(edge.pcap)
    got = read_packets(kafka_bootstrap, topic)
    assert len(expected) > 40, expected
    assert sorted(map(_fields, got)) == sorted(map(_fields, expected)), (len(got), len(expected), err)
    by_ts = {_fields(r): r.ts for r in expected}
    skew = [by_ts[_fields(r)] - r.ts for r in got]
    assert max(map(abs, skew)) < 0.05, skew[:5]  # kernel receive times (NFULA_TIMESTAMP), not read times
    # the 14-send connection was cut at 10
    counts: dict[int, int] = {}
    for r in got:
        counts[r.sport] = counts.get(r.sport, 0) + 1
    assert max(counts.values()) == 10
    print(f"{mode}: {len(got)} records == tcpdump's first-10 ingress packets; traffic {traffic_s:.1f}s")


@pytest.mark.kafka
def test_kernel_sampling_share_is_binomial(pair: Pair, kafka_bootstrap: str, topo: tuple[Path, str]) -> None:
    """2,000 SYNs from incrementing source ports to a closed port, kernel sampling at 0.5."""
    if not shutil.which("hping3"):
        pytest.skip("needs hping3")
    topo_path, topic = topo
    group, n = 34, 2000
    r = pair.rstscope_s("edge", "rules", "--nflog-group", str(group), "--probability", "0.5",
                        "--server-port", "81", "--family", "4", "--apply")
    assert r.returncode == 0, r.stderr
    try:
        edge = Edge(pair, kafka_bootstrap, topo_path, "--nflog-group", str(group))
        pair.cx("hping3", "-q", "-S", "-p", "81", "-s", "20000", "-c", str(n), "-i", "u300", SERVER_IP,
                check=False)
        code, out, err = edge.stop()
    finally:
        assert pair.rstscope_s("edge", "rules", "--nflog-group", str(group), "--family", "4",
                               "--remove").returncode == 0
    assert _ours(pair, group) == ""
    assert code == 0, err
    sent = first_ten(edge.pcap, port=81)
    tuples = {(r.src, r.sport) for r in sent}
    assert len(tuples) >= n * 0.99, len(tuples)  # hping3 made ~2,000 distinct connections
    got = read_packets(kafka_bootstrap, topic)
    sampled = {(r.src, r.sport) for r in got}
    assert sampled <= tuples
    assert len(got) == len(sampled)  # one SYN each: the RST goes the other way
    m = len(tuples)
    bound = 4.5 * math.sqrt(m * 0.25)  # 4.5 sigma: a false failure about once in 150,000 runs
    assert abs(len(sampled) - m / 2) <= bound, (len(sampled), m)
    print(f"sampled {len(sampled)} of {m} connections (expected {m / 2:.0f} +- {bound:.0f})")
