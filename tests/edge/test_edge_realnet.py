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


def _nft_ruleset(p: Pair) -> str:
    return p.sx("nft", "list", "ruleset").stdout if shutil.which("nft") else ""


def remove_rules(p: Pair, group: int) -> None:
    """Take out whatever a test installed for ``group`` (iptables, both families, and nft), even after
    a failed assertion: a left-over rule shares the conntrack label and would sample for the next test."""
    p.rstscope_s("edge", "rules", "--nflog-group", str(group), "--family", "both", "--remove")
    if shutil.which("nft"):
        p.rstscope_s("edge", "rules", "--nft", "--nflog-group", str(group), "--remove")


@pytest.fixture
def groups(pair: Pair) -> Iterator[list[int]]:
    """NFLOG groups a test installs rules for; removed after the test whatever happened, then checked."""
    used: list[int] = []
    yield used
    for g in used:
        remove_rules(pair, g)
    left = [g for g in used if _ours(pair, g) or f"rstscope_{g} " in _nft_ruleset(pair)]
    assert not left, f"rules left behind for groups {left}"


def _expected_iptables(group: int, prob: str, tcp_ports: str, udp_ports: str) -> list[str]:
    """``iptables -S`` as the kernel lists the rules (its own spelling: --tcp-flags, quoted label)."""
    c, lab = f"RSTSCOPE-{group}", '-m connlabel --label "42"'
    cap = "-m connbytes ! --connbytes 11 --connbytes-mode packets --connbytes-dir original"
    log = f"-j NFLOG --nflog-prefix rstscope --nflog-group {group}"
    draw = f"-m statistic --mode random --probability {prob}"
    return [
        f"-N {c}",
        f"-A PREROUTING -p tcp -j {c}",
        f"-A PREROUTING -p udp -j {c}",
        f"-A {c} -p tcp -m multiport --dports {tcp_ports} -m tcp --tcp-flags FIN,SYN,RST,ACK SYN "
        f"-m conntrack --ctstate NEW {draw} {lab} --set",
        f"-A {c} -p tcp -m multiport --dports {tcp_ports} -m conntrack --ctdir ORIGINAL {lab} {cap} {log} "
        f"--nflog-size 128",
        f"-A {c} -p udp -m multiport --dports {udp_ports} -m conntrack --ctstate NEW {draw} {lab} --set",
        f"-A {c} -p udp -m multiport --dports {udp_ports} -m conntrack --ctdir ORIGINAL {lab} {cap} {log} "
        f"--nflog-size 1500",
    ]


def test_rules_apply_idempotent_and_remove(pair: Pair, groups: list[int]) -> None:
    groups.append(31)
    args = ["edge", "rules", "--nflog-group", "31", "--probability", "0.25", "--server-port", "80,443"]
    r = pair.rstscope_s(*args, "--apply")
    assert r.returncode == 0, r.stderr
    first = _ours(pair, 31)
    assert pair.rstscope_s(*args, "--apply").returncode == 0
    assert _ours(pair, 31) == first  # no duplicates
    # each family: the chain, TCP's two rules, UDP/443's two rules (QUIC, the default), two jumps
    one = _expected_iptables(31, "0.25000000000", "80,443", "443")
    assert first.splitlines() == one + one, first
    # other QUIC ports and copy size refill the chain; --remove, even with --no-quic, takes out both jumps
    r = pair.rstscope_s(*args, "--quic-port", "443,8443", "--quic-size", "1400", "--family", "4", "--apply")
    assert r.returncode == 0, r.stderr
    v4 = pair.sx("iptables", "-w", "-t", "mangle", "-S").stdout
    assert "-p udp -m multiport --dports 443,8443 -m conntrack --ctdir ORIGINAL" in v4 and "--nflog-size 1400" in v4
    r = pair.rstscope_s("edge", "rules", "--nflog-group", "31", "--no-quic", "--remove")
    assert r.returncode == 0, r.stderr
    assert _ours(pair, 31) == ""


def test_a_second_rule_set_needs_its_own_label(pair: Pair, groups: list[int]) -> None:
    groups.extend([33, 34])
    assert pair.rstscope_s("edge", "rules", "--nflog-group", "33", "--apply").returncode == 0
    r = pair.rstscope_s("edge", "rules", "--nflog-group", "34", "--apply")
    assert r.returncode == 2 and "label 42 is set by the rstscope rules of NFLOG group(s) 33" in r.stderr, r.stderr
    assert _ours(pair, 34) == ""  # nothing installed
    r = pair.rstscope_s("edge", "rules", "--nflog-group", "34", "--label", "43", "--apply")
    assert r.returncode == 0, r.stderr


def test_nft_rules_apply_idempotent_and_remove(pair: Pair, groups: list[int]) -> None:
    if not shutil.which("nft"):
        pytest.skip("needs nft")
    groups.append(32)
    args = ["edge", "rules", "--nft", "--nflog-group", "32", "--probability", "0.5"]
    assert pair.rstscope_s(*args, "--apply").returncode == 0
    assert pair.rstscope_s(*args, "--apply").returncode == 0
    ruleset = pair.sx("nft", "list", "ruleset").stdout
    assert ruleset.count("table inet rstscope_32") == 1, ruleset
    # nft's own listing (it folds `meta l4proto tcp tcp ...` into `tcp ...`): TCP's two rules, UDP/443's two
    rules = [line.strip() for line in ruleset.split("table inet rstscope_32", 1)[1].splitlines()
             if "ct label" in line]
    assert rules == [
        "tcp flags syn / fin,syn,rst,ack ct state new numgen random mod 1000000 < 500000 ct label set 42",
        'meta l4proto tcp ct direction original ct label 42 ct original packets < 11 log prefix "rstscope" '
        "group 32 snaplen 128",
        "udp dport 443 ct state new numgen random mod 1000000 < 500000 ct label set 42",
        'udp dport 443 ct direction original ct label 42 ct original packets < 11 log prefix "rstscope" '
        "group 32 snaplen 1500",
    ], ruleset
    assert pair.rstscope_s(*args, "--no-quic", "--apply").returncode == 0  # atomic replace: UDP rules gone
    assert "udp" not in pair.sx("nft", "list", "table", "inet", "rstscope_32").stdout
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


def first_ten(pcap: Path, port: int | None = None, server_ip: str = SERVER_IP) -> list[PacketRecord]:
    """Client->server packets of the capture, at most 10 per connection (a connection starts at a SYN;
    a SYN with a new ISN on the same tuple starts a new one, as in conntrack and the gate)."""
    out: list[PacketRecord] = []
    conns: dict[tuple[bytes, int, bytes, int], list[int]] = {}  # tuple -> [isn, count]
    server = bytes(map(int, server_ip.split(".")))
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

    def __init__(self, p: Pair, bootstrap: str, topo: Path, *source: str, bpf: str = "tcp") -> None:
        self.p = p
        self.pcap = p.tmp / f"{uuid.uuid4().hex[:6]}.pcap"
        self.log = p.tmp / f"edge-{uuid.uuid4().hex[:6]}.log"
        self.td = subprocess.Popen(["ip", "netns", "exec", p.server, "tcpdump", "-i", p.sdev, "-nn", "-U",
                                    "--immediate-mode", "-w", str(self.pcap), bpf], stdout=subprocess.DEVNULL,
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
                                               groups: list[int], mode: str) -> None:
    topo_path, topic = topo
    group = 33
    if mode == "nflog":
        groups.append(group)
        r = pair.rstscope_s("edge", "rules", "--nflog-group", str(group), "--probability", "1", "--apply")
        assert r.returncode == 0, r.stderr
        source = ["--nflog-group", str(group)]
    else:
        source = ["--interface", pair.sdev, "--bpf", "tcp", "--server-ip", SERVER_IP, "--sample", "1"]
    edge = Edge(pair, kafka_bootstrap, topo_path, *source)
    try:
        t0 = time.monotonic()
        pair.cx(sys.executable, "-c", CLIENT)
        if shutil.which("nmap"):
            pair.cx("nmap", "-sS", "-n", "-Pn", "-p", "80,81,443", "--max-retries", "0", SERVER_IP)
        metrics = edge.metrics()
    finally:
        code, out, err = edge.stop()
    traffic_s = time.monotonic() - t0
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
    for rec in got:
        counts[rec.sport] = counts.get(rec.sport, 0) + 1
    assert max(counts.values()) == 10
    print(f"{mode}: {len(got)} records == tcpdump's first-10 ingress packets; traffic {traffic_s:.1f}s")


def _out_rsts(p: Pair) -> int:
    """The server namespace's Tcp OutRsts counter (/proc/net/snmp is per network namespace)."""
    head, vals = [line.split() for line in p.sx("cat", "/proc/net/snmp").stdout.splitlines()
                  if line.startswith("Tcp:")]
    return int(vals[head.index("OutRsts")])


@pytest.mark.kafka
def test_kernel_sampling_share_is_binomial(pair: Pair, kafka_bootstrap: str, topo: tuple[Path, str],
                                           groups: list[int]) -> None:
    """2,000 SYNs from incrementing source ports to a closed port, kernel sampling at 0.5."""
    if not shutil.which("hping3"):
        pytest.skip("needs hping3")
    topo_path, topic = topo
    group, n, base = 34, 2000, 20000
    groups.append(group)
    r = pair.rstscope_s("edge", "rules", "--nflog-group", str(group), "--probability", "0.5",
                        "--server-port", "81", "--family", "4", "--apply")
    assert r.returncode == 0, r.stderr
    edge = Edge(pair, kafka_bootstrap, topo_path, "--nflog-group", str(group))
    rsts = _out_rsts(pair)
    try:
        pair.cx("hping3", "-q", "-S", "-p", "81", "-s", str(base), "-c", str(n), "-i", "u300", SERVER_IP,
                check=False)
    finally:
        code, out, err = edge.stop()
    assert code == 0, err
    # the denominator is what the server's kernel received: one RST per SYN to the closed port. Not
    # tcpdump's count: tcpdump beside the edge misses bursts on a busy machine (measured: 28 of 2,000)
    m = _out_rsts(pair) - rsts
    assert n * 0.99 <= m <= n, m
    client = bytes(map(int, CLIENT_IP.split(".")))
    hping = {(client, port) for port in range(base, base + n)}  # hping3 -s: one source port per SYN
    seen = {(r.src, r.sport) for r in first_ten(edge.pcap, port=81)}
    assert seen <= hping and len(seen) >= n * 0.9, len(seen)
    got = read_packets(kafka_bootstrap, topic)
    sampled = {(r.src, r.sport) for r in got}
    assert sampled <= hping
    assert len(got) == len(sampled)  # one SYN each: the RST goes the other way
    bound = 4.5 * math.sqrt(m * 0.25)  # 4.5 sigma: a false failure about once in 150,000 runs
    assert abs(len(sampled) - m / 2) <= bound, (len(sampled), m)
    print(f"sampled {len(sampled)} of {m} connections (expected {m / 2:.0f} +- {bound:.0f})")
