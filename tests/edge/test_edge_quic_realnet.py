"""QUIC through the kernel's sampling rules: real aioquic connections (IPv4 and IPv6) and TCP through a
router namespace that runs `rstscope edge rules --apply` (UDP/443 sampled besides TCP) and the real
`rstscope edge --nflog-group N --netns ROUTER` publishing to the real broker.

client ns  ==== router ns (rules, NFLOG, tcpdump on its client side) ==== server ns (aioquic, http.server)

The router sees both directions in PREROUTING, so `--ctdir ORIGINAL` is what keeps the server's datagrams
out. Against tcpdump's capture of the router's client-side interface: every sampled QUIC flow's first
<= 10 client datagrams reach the topic (header fields equal), no server datagram, no payload byte (every
12-byte slice of every datagram is absent from the topic's bytes), TCP exactly its first-10 packets;
at probability 0.5 the share of sampled QUIC flows is binomial-plausible. Namespaces and rules are
removed at the end.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from rstscope.capture.files import read_frames
from rstscope.codecs.packet import Watermark, decode_message
from rstscope.quic.packet import QuicDatagram
from rstscope.quic.udp import UdpDatagram, decode_udp
from tests.edge.test_edge_realnet import Edge, Pair, _env, _fields, _need, first_ten, remove_rules, topology_file

pytestmark = [pytest.mark.realnet, pytest.mark.kafka]

C4, RC4, RS4, S4 = "10.95.1.2", "10.95.1.1", "10.95.2.1", "10.95.2.2"
C6, RC6, RS6, S6 = "fd95:1::2", "fd95:1::1", "fd95:2::1", "fd95:2::2"
SNI = "allowed.example"
TCP_CLIENT = r"""
import socket, subprocess, time
S = "SERVER"
for _ in range(2):
    subprocess.run(["curl", "-s", "-o", "/dev/null", "http://%s/" % S], check=True)
s = socket.create_connection((S, 80)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(14):   # more than 10 client packets: only the first 10 may leave the edge
    s.send(b"X-%d: y\r\n" % i if i else b"GET / HTTP/1.1\r\n"); time.sleep(0.02)
s.close()
""".replace("SERVER", S4)


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60)


def _ip(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


class Bed:
    """Three namespaces of this test's own (names carry the pid), torn down whatever happens."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.c, self.r, self.s = f"rqC{tag}", f"rqR{tag}", f"rqS{tag}"
        self.cdev, self.rcdev, self.rsdev, self.sdev = f"rqc{tag}", f"rqa{tag}", f"rqb{tag}", f"rqs{tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix="rstscope-quicnet-"))
        self.procs: list[subprocess.Popen[str]] = []
        # what test_edge_realnet's Edge needs: capture (tcpdump and NFLOG) in the router
        self.router = Pair(self.c, self.r, self.rcdev, self.tmp)

    def x(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", ns, *cmd, check=check)

    def up(self) -> None:
        for ns in (self.c, self.r, self.s):
            _sh("ip", "netns", "add", ns)
            self.x(ns, "ip", "link", "set", "lo", "up")
            self.x(ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        _sh("ip", "link", "add", self.cdev, "netns", self.c, "type", "veth", "peer", "name", self.rcdev,
            "netns", self.r)
        _sh("ip", "link", "add", self.sdev, "netns", self.s, "type", "veth", "peer", "name", self.rsdev,
            "netns", self.r)
        for ns, dev, a4, a6 in ((self.c, self.cdev, C4, C6), (self.r, self.rcdev, RC4, RC6),
                                (self.r, self.rsdev, RS4, RS6), (self.s, self.sdev, S4, S6)):
            self.x(ns, "ip", "addr", "add", f"{a4}/24", "dev", dev)
            self.x(ns, "ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            # wire-size packets: no GRO merging UDP or TCP on the router's way
            self.x(ns, "ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off",
                   check=False)
            self.x(ns, "ip", "link", "set", dev, "up")
        self.x(self.r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for ns, gw4, gw6 in ((self.c, RC4, RC6), (self.s, RS4, RS6)):
            self.x(ns, "ip", "route", "add", "default", "via", gw4)
            self.x(ns, "ip", "-6", "route", "add", "default", "via", gw6)
        from tests.quicbed.bed import make_cert

        cert, key = make_cert(self.tmp)
        cfg = {"addresses": [S4, S6], "cert": str(cert), "key": str(key), "idle_timeout": 5.0}
        self._bg(self.s, [sys.executable, "-m", "tests.quicbed.endpoints", "server", json.dumps(cfg)], "ready")
        self._bg(self.s, [sys.executable, "-m", "http.server", "80", "--bind", S4], "Serving")

    def _bg(self, ns: str, argv: list[str], ready: str) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**_env(), "PYTHONUNBUFFERED": "1"})
        self.procs.append(p)
        assert p.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if ready in line:
                return
            assert line, f"{argv[2]} ended before it was ready"
        pytest.fail(f"{argv} not ready")

    def down(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in (self.c, self.r, self.s):
            _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def quic_clients(self, per_family: list[int], parallel: int) -> list[dict[str, Any]]:
        """Real aioquic connections, each from its own UDP socket, ``per_family[k]`` requests on the k-th
        connection of each family; ``parallel`` client processes per family. Returns their start lines."""
        procs = []
        for src, dst in ((C4, S4), (C6, S6)):
            for j in range(parallel):
                conns = [{"i": k, "dst": dst, "sni": SNI, "mode": "echo", "requests": r, "idle_timeout": 2.0}
                         for k, r in enumerate(per_family) if k % parallel == j]
                spec = {"src": src, "conns": conns, "pause": 0.02}
                procs.append(subprocess.Popen(["ip", "netns", "exec", self.c, sys.executable, "-m",
                                               "tests.quicbed.endpoints", "client", json.dumps(spec)],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
        lines = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            lines += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return lines


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    _need("ip", "iptables", "ip6tables", "tcpdump", "curl")
    for mod in ("aioquic", "cryptography"):
        pytest.importorskip(mod)
    b = Bed()
    try:
        b.up()
        yield b
    finally:
        b.down()


def _udp_capture(pcap: Path) -> list[UdpDatagram]:
    out = []
    for f in read_frames(pcap):
        d = decode_udp(f.ts, f.linktype, f.data)
        if not isinstance(d, str) and 443 in (d.sport, d.dport):
            out.append(d)
    return out


def _topic(bootstrap: str, topic: str) -> tuple[list[bytes], list[Any], list[QuicDatagram]]:
    from tests.kafka.test_pipeline import read_topic

    values, tcp, quic = [], [], []
    for _k, value, _p, _o in read_topic(bootstrap, topic):
        values.append(value)
        m = decode_message(value)  # checks every field of every record (codecs.quic.check_quic)
        if isinstance(m, Watermark):
            continue
        assert not m.errors
        tcp += [pkt for pkt, _geo in m.packets]
        quic += [dg for _i, dg, _geo in m.quic]
        # the documented shape only: [17, ts, ipv, src, dst, sport, dport, ttl, ipid, packets, hello],
        # each packet [type, version, dcid_len, dcid_tag, size, flags] (docs/wire-formats.md)
        for e in msgpack.unpackb(value, raw=False)[3]:
            if e[0] == 17:
                assert len(e) == 11 and all(len(pk) == 6 for pk in e[9]), e
                assert e[10] is None or len(e[10]) == 2
    return values, tcp, quic


def _no_payload(blob: bytes, datagrams: list[UdpDatagram]) -> int:
    """Every 12-byte slice (stride 4) of every datagram's UDP payload that is not a run of few byte
    values must be absent from the topic's bytes. Returns how many slices were checked."""
    n = 0
    for d in datagrams:
        for i in range(0, len(d.payload) - 12, 4):
            w = d.payload[i:i + 12]
            if len(set(w)) >= 6:
                assert w not in blob, (d.sport, d.dport, i, w.hex())
                n += 1
    return n


def _run(bed: Bed, bootstrap: str, group: int, probability: str, requests: list[int], parallel: int,
         tcp: bool) -> tuple[dict[tuple[bytes, int], list[UdpDatagram]], dict[tuple[bytes, int], list[QuicDatagram]],
                            list[dict[str, Any]], str, Any]:
    tag = f"q{os.urandom(4).hex()}"
    topo = topology_file(bed.tmp, tag)
    r = subprocess.run([sys.executable, "-m", "rstscope.cli", "topics", "apply", "--bootstrap", bootstrap,
                        "--topology", str(topo), "--app-id", tag], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    try:
        r = bed.router.rstscope_s("edge", "rules", "--nflog-group", str(group), "--probability", probability,
                                  "--apply")
        assert r.returncode == 0, r.stderr
        edge = Edge(bed.router, bootstrap, topo, "--nflog-group", str(group), bpf="udp port 443 or tcp port 80")
        tcp_proc = None
        try:
            if tcp:
                tcp_proc = subprocess.Popen(["ip", "netns", "exec", bed.c, sys.executable, "-c", TCP_CLIENT],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            lines = bed.quic_clients(requests, parallel)
            if tcp_proc is not None:
                assert tcp_proc.wait(60) == 0, tcp_proc.stderr.read() if tcp_proc.stderr else ""
        finally:
            code, out, err = edge.stop()
        # the rules, as the kernel holds them, sampled what this test counts
        listed = bed.router.sx("iptables", "-w", "-t", "mangle", "-S").stdout
        assert f"-A PREROUTING -p udp -j RSTSCOPE-{group}" in listed and "--nflog-size 1500" in listed
    finally:
        remove_rules(bed.router, group)
    assert f"RSTSCOPE-{group}" not in bed.router.sx("iptables", "-w", "-t", "mangle", "-S").stdout
    assert f"RSTSCOPE-{group}" not in bed.router.sx("ip6tables", "-w", "-t", "mangle", "-S").stdout
    assert code == 0, err
    assert "lost 0" in err and "delivery failures 0" in err, err
    summary = json.loads(out.strip().splitlines()[-1])
    ends = [line for line in lines if line.get("event") == "end"]
    assert len(ends) == 2 * len(requests) and all(e["handshake_completed"] for e in ends), ends
    values, tcp_recs, quic = _topic(bootstrap, topic_of(topo))
    # ground truth: tcpdump on the router's client-side interface (client datagrams come in there,
    # the server's go out there)
    udp = _udp_capture(edge.pcap)
    client_dg: dict[tuple[bytes, int], list[UdpDatagram]] = defaultdict(list)
    for d in udp:
        if d.dport == 443:
            client_dg[(d.src, d.sport)].append(d)
    got: dict[tuple[bytes, int], list[QuicDatagram]] = defaultdict(list)
    for dg in quic:
        r0 = dg.recs[0]
        assert r0.dport == 443 and r0.sport != 443, r0  # never one of the server's datagrams
        got[(r0.src, r0.sport)].append(dg)
    assert set(got) <= set(client_dg)
    for key, dgs in got.items():
        want = sorted(client_dg[key], key=lambda d: d.ts)[:10]
        assert len(dgs) == len(want), (key, len(dgs), len(client_dg[key]))
        for dg, d in zip(sorted(dgs, key=lambda g: g.recs[0].ts), want, strict=True):
            r0 = dg.recs[0]
            assert (r0.ip_version, r0.src, r0.dst, r0.sport, r0.dport, r0.ttl, r0.ipid) == \
                   (d.ip_version, d.src, d.dst, d.sport, d.dport, d.ttl, d.ipid)
            assert abs(r0.ts - d.ts) < 0.05  # the kernel's receive time (NFULA_TIMESTAMP)
            # its QUIC packets, read whole (a snapped copy would be quic.snapped_udp); aioquic pads a
            # datagram holding an Initial to 1,200 bytes after its packets, with zeros outside any packet
            assert 0 < sum(r.size for r in dg.recs) <= len(d.payload)
        first = sorted(dgs, key=lambda g: g.recs[0].ts)[0]
        assert first.recs[0].ptype == "initial" and first.recs[0].hello and first.recs[0].decrypted
    hellos = [dg.hello for dg in quic if dg.hello is not None]
    # one ClientHello per attempt, decrypted at the edge from NFLOG's copy. Attempts, not client ports: a
    # client may reuse a port for a later connection (seen once in 80 flows), a second attempt on the tuple
    opening = [dg for dg in quic if any(r.ptype == "initial" and r.hello and r.decrypted == "own" for r in dg.recs)]
    assert len(hellos) == len(opening) >= len(got)
    sni_hash = hashlib.sha256(SNI.encode()).hexdigest()[:16]
    assert all(h.sni == sni_hash and h.alpn == ("rstscope-echo",) for h in hellos), hellos
    blob = b"".join(values)
    assert SNI.encode() not in blob and b"rstscope quic bed" not in blob and b"GET /" not in blob
    for line in lines:
        if line.get("event") == "start":
            assert bytes.fromhex(line["odcid"]) not in blob  # connection ids stay at the edge
    checked = _no_payload(blob, udp)
    assert checked > 1000
    return client_dg, got, lines, err, (summary, tcp_recs, edge.pcap, checked)


def topic_of(topo: Path) -> str:
    return f"{topo.stem.removeprefix('topology-')}.packets"


def test_quic_first_ten_client_datagrams_through_nflog(bed: Bed, kafka_bootstrap: str) -> None:
    """Probability 1: every QUIC flow of both families is sampled and yields exactly its first <= 10
    client datagrams, TCP beside it exactly its first-10 packets."""
    t0 = time.monotonic()
    requests = [1, 1, 3, 8]  # 8 echo requests: more than 10 client datagrams, cut at 10 by the kernel
    client_dg, got, lines, err, (summary, tcp_recs, pcap, checked) = _run(
        bed, kafka_bootstrap, 41, "1", requests, parallel=1, tcp=True)
    flows = {(_ip(s["client_ip"]), s["client_port"]) for s in lines if s.get("event") == "start"}
    assert set(client_dg) == flows and set(got) == flows, (len(client_dg), len(got), len(flows))
    assert {len(v) for v in got.values()} >= {10} and max(len(v) for v in client_dg.values()) > 10
    assert {d.recs[0].ip_version for v in got.values() for d in v} == {4, 6}
    # the edge dropped nothing of QUIC: the kernel sent only client datagrams, at most 10 per flow
    assert not [k for k in summary["dropped"] if k.startswith("quic.")], summary
    # TCP beside it: no loss, exactly tcpdump's first-10 client packets per connection
    want_tcp = first_ten(pcap, server_ip=S4)
    assert len(want_tcp) >= 20
    assert sorted(map(_fields, tcp_recs)) == sorted(map(_fields, want_tcp))
    print(f"{len(got)} QUIC flows, {sum(map(len, got.values()))} datagrams == first-10 of tcpdump's; "
          f"{len(tcp_recs)} TCP records; {checked} payload slices absent; {time.monotonic() - t0:.1f}s")


def test_quic_kernel_sampling_share_is_binomial(bed: Bed, kafka_bootstrap: str) -> None:
    """Probability 0.5: each real QUIC flow is sampled whole (its first <= 10 datagrams) or not at all,
    and the sampled count is within 4.5 sigma of half."""
    t0 = time.monotonic()
    n = 40  # per family
    client_dg, got, lines, err, (summary, _tcp, _pcap, _checked) = _run(
        bed, kafka_bootstrap, 42, "0.5", [1] * n, parallel=2, tcp=False)
    flows = {(_ip(s["client_ip"]), s["client_port"]) for s in lines if s.get("event") == "start"}
    assert set(client_dg) == flows and len(flows) == 2 * n
    m, k = len(flows), len(got)
    bound = 4.5 * math.sqrt(m * 0.25)
    assert abs(k - m / 2) <= bound, (k, m)
    assert 0 < k < m  # sampling at 0.5 really sampled
    print(f"sampled {k} of {m} QUIC flows (expected {m / 2:.0f} +- {bound:.0f}); {time.monotonic() - t0:.1f}s")
