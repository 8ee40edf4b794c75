#!/usr/bin/env python3
"""Make rstscope's packet-capture fixtures with real tools in throw-away network namespaces.

Usage (as root, on a Linux host; nothing leaves the namespaces this script creates):

    python3 scripts/make_fixtures.py --out tests/fixtures            # all fixtures
    python3 scripts/make_fixtures.py --out tests/fixtures --only http_ok,zmap

What it does
------------
* Creates two namespaces, ``rsfx-cli`` (client, 10.99.0.1 / fd99::1) and ``rsfx-srv``
  (server, 10.99.0.2 / fd99::2) joined by a veth pair ``cli0``/``srv0`` with all offloads
  off (so every captured segment is a real wire-size packet).
* Runs nginx (port 80) and a tiny "sink" server (accepts, reads, never answers) in the
  server namespace and drives real clients (curl, python sockets, nmap, zmap, hping3,
  masscan) in the client namespace, one scenario per capture file.
* Captures on the SERVER side (tcpdump, dumpcap for pcapng) and stops the capture with SIGINT.
* Derives the expected rstscope results from the captured packets with its own small,
  independent pcap/pcapng reader and classifier (``analyse()`` below, the rules of
  docs/fixtures.md / SPEC sections 4-5), never by calling rstscope, checks them against the
  counts each scenario was designed to produce (``hint``; a difference FAILS the fixture: it is
  not written) and writes MANIFEST.json.
* Deletes everything it created in ``finally`` (idempotent: a previous run's leftovers are
  removed first).

Timing conventions every fixture follows
----------------------------------------
* A capture never straddles a 15-minute (900 s) window boundary: before each capture the
  script waits until it is >= 90 s past a boundary and far enough from the next one.
* A capture ends when its traffic ends: tcpdump is stopped about 1 s after the scenario's last
  packet. There is no end marker: a pcap file has no "end of capture" timestamp, so the end of
  input is the last frame, exactly as for a user's capture. A connection that ended (RST, FIN or
  10 packets) is classified however close to that end it lies; one that has not ended is a
  timeout only when its last packet lies >= 10 s before the end, so every scenario that wants
  timeouts makes real later traffic (an ordinary curl workload whose connections all close with
  FIN) for more than 10 s after its idle connections went quiet.

Debian packages needed (Debian 12): python3 (>= 3.9, stdlib only), iproute2, ethtool,
iptables, tcpdump, libpcap0.8, curl, nginx-light, nmap, zmap, hping3, masscan,
wireshark-common (dumpcap, editcap, capinfos).
Kernel: netns, veth, tun/tap, iptables NFLOG (xt_NFLOG + nfnetlink_log), IPv6.
The kernel this was made on had no 8021q/ipip/act_vlan support, so the VLAN and raw-IP
fixtures use a userspace "wire" (``_relay`` below) built from tun/tap devices and a veth
trunk; see docs/fixtures.md.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import json
import lzma
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

SCRIPT = os.path.abspath(__file__)
CLI, SRV = "rsfx-cli", "rsfx-srv"
CLI_MAC, SRV_MAC = "02:99:00:00:00:01", "02:99:00:00:00:02"
C4, S4 = "10.99.0.1", "10.99.0.2"
C6, S6 = "fd99::1", "fd99::2"
SINK_PORTS = [22, 23, 443, 8080, 8081]  # "open" ports served by the sink (never answers data)
BLACKHOLE_PORT = 9999                    # server-ns iptables DROPs SYNs to it (syn_retries)
WINDOW = 900                             # 15-minute tumbling windows
GRACE = 10.0                             # grace period / timeout threshold of the method (SPEC 4)
MAX_PKTS = 10                            # first 10 client packets, SYN included
HTTP_REQ = b"GET / HTTP/1.1\r\nHost: fixture\r\nUser-Agent: rstscope-fixture\r\n\r\n"
HTTP_REQ_CLOSE = b"GET / HTTP/1.1\r\nHost: fixture\r\nUser-Agent: rstscope-fixture\r\nConnection: close\r\n\r\n"

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    keepalive_timeout 120s;
    client_header_timeout 120s;
    server {{
        listen 80;
        listen [::]:80;
        location / {{ return 200 "rstscope fixture\\n"; }}
    }}
}}
"""


# ----------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[make_fixtures {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: str | list, check: bool = True, quiet: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command; raise with its output when it fails (set -e style)."""
    shell = isinstance(cmd, str)
    r = subprocess.run(cmd, shell=shell, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {cmd}\nstdout: {r.stdout}\nstderr: {r.stderr}")
    if not quiet and r.stdout.strip():
        pass
    return r


def nsx(ns: str, cmd: str, **kw) -> subprocess.CompletedProcess:
    return sh(f"ip netns exec {ns} {cmd}", **kw)


def helper(ns: str, *args: str) -> list[str]:
    """Command line that runs one of this script's helper sub-commands inside a namespace."""
    return ["ip", "netns", "exec", ns, sys.executable, SCRIPT, *args]


def run_helper(ns: str, *args: str, timeout: float = 120) -> str:
    r = subprocess.run(helper(ns, *args), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"helper {args} failed: {r.stdout} {r.stderr}")
    return r.stdout


class Background:
    """A background process we started; waits for a 'ready' line on stdout when asked."""

    def __init__(self, argv: list[str], ready: str | None = None, timeout: float = 20, name: str = ""):
        self.name = name or argv[0]
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if ready:
            t0 = time.time()
            while True:
                line = self.p.stdout.readline()
                if ready in line:
                    break
                if not line and self.p.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early: {self.p.stderr.read()}")
                if time.time() - t0 > timeout:
                    raise RuntimeError(f"{self.name} not ready after {timeout}s")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Capture:
    """tcpdump (or dumpcap) in the server namespace; stopped with SIGINT so the file is flushed."""

    def __init__(self, argv: list[str], path: Path):
        self.path = path
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.p = subprocess.Popen(["ip", "netns", "exec", SRV, *argv], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(15):
            self.p.kill()
            raise RuntimeError(f"capture did not start: {argv} {self.lines}")
        time.sleep(1.0)

    def _read(self):
        for line in self.p.stderr:
            self.lines.append(line.rstrip())
            if "listening on" in line or "Capturing on" in line:
                self.ready.set()

    def stop(self) -> None:
        time.sleep(0.5)
        self.p.send_signal(signal.SIGINT)
        try:
            rc = self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise RuntimeError("capture did not stop on SIGINT") from None
        time.sleep(0.2)
        if rc != 0:
            raise RuntimeError(f"capture exited {rc}: {self.lines}")
        drops = [ln for ln in self.lines if "dropped by kernel" in ln and not ln.startswith("0 ")]
        if drops:
            raise RuntimeError(f"capture dropped packets: {drops}")
        log("  capture: " + "; ".join(ln for ln in self.lines if "captured" in ln or "received/dropped" in ln))


def wait_for_safe_window(duration: float) -> None:
    """Sleep so that [now, now+duration] is >= 90 s away from any multiple of 900 s."""
    while True:
        pos = time.time() % WINDOW
        if pos >= 90 and pos + duration + 90 <= WINDOW:
            return
        wait = (WINDOW - pos) + 90 if pos >= 90 else 90 - pos
        log(f"  near a 15-minute window boundary, sleeping {wait:.0f}s")
        time.sleep(wait + 0.5)


def curl(url: str, n: int, extra: str = "", gap: float = 0.3) -> None:
    for _ in range(n):
        nsx(CLI, f"curl -sS -o /dev/null --max-time 5 {extra} '{url}'")
        time.sleep(gap)


def client(action: str, host: str, port: int, count: int = 1, *extra) -> str:
    return run_helper(CLI, "_client", action, host, str(port), str(count), *map(str, extra))


# ----------------------------------------------------------------------------------------
# helper sub-commands (run inside a namespace by the orchestrator)
# ----------------------------------------------------------------------------------------

def _linger0(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _read_http_response(s: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        body += s.recv(4096)


def helper_client(action: str, host: str, port: int, count: int, extra: list[str]) -> None:
    """Client behaviours; each makes `count` separate connections, 0.3 s apart."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    keep = []
    for _ in range(count):
        s = socket.socket(fam, socket.SOCK_STREAM)
        if action == "syn_only":                   # SYN-ACK is dropped; give up before the 1 s RTO
            s.settimeout(0.5)
            try:
                s.connect((host, port))
                raise SystemExit("syn_only unexpectedly connected")
            except TimeoutError:
                pass
            s.close()
            time.sleep(0.3)
            continue
        if action == "reuse_port":                 # same client port for every connection
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", int(extra[0])))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((host, port))
        if action in ("abort_ack", "reuse_port"):  # handshake, then RST
            pass
        elif action == "abort_psh":                # one request segment, RST at once (no reply comes)
            s.sendall(HTTP_REQ)
        elif action == "abort_psh_reply":          # one request, read the whole reply, then RST
            s.sendall(HTTP_REQ)
            _read_http_response(s)
            time.sleep(0.2)
        elif action in ("abort_later", "fin_abort"):  # n separate data segments, (FIN,) RST
            for k in range(int(extra[0])):
                s.send(b"seg%02d\r\n" % k)
                time.sleep(0.05)
            if action == "fin_abort":
                s.shutdown(socket.SHUT_WR)
            time.sleep(0.1)
        elif action == "idle_ack":                 # handshake then silence
            keep.append(s)
        elif action == "idle_psh":                 # one data segment then silence
            s.sendall(HTTP_REQ)
            keep.append(s)
        elif action == "idle_reply":               # request, read the reply (client ACKs it), silence
            s.sendall(HTTP_REQ)
            _read_http_response(s)
            keep.append(s)
        elif action == "pause_fin":                # request, read the reply, pause extra[0] s, close (FIN)
            s.sendall(HTTP_REQ)
            _read_http_response(s)
            time.sleep(float(extra[0]))
            s.close()                              # nothing unread: the kernel sends a FIN, not a RST
            time.sleep(0.3)
            continue
        else:
            raise SystemExit(f"unknown client action {action}")
        if s not in keep:
            _linger0(s)
            s.close()
        time.sleep(0.3)
    if keep:
        print("ready", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        # exit quietly: sockets are closed after the capture has been stopped


def _bound_socket(fam: int, cport: int) -> socket.socket:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", cport))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def helper_port_reuse(host: str, port: int, cport: int, pause: float) -> None:
    """Three connections from the SAME client port (SO_REUSEADDR + bind) to nginx, each with a new ISN.

    1. `Connection: close` request; nginx answers and closes first (the server, not the client, holds
       TIME_WAIT), the client reads to EOF and closes: FIN.  2. 1 s later: request, read the reply,
       abort with SO_LINGER(1,0): RST+ACK.  3. `pause` s later: like 1 (FIN).
    """
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for k in range(3):
        if k == 1:
            time.sleep(1.0)
        elif k == 2:
            time.sleep(pause)
        s = _bound_socket(fam, cport)
        s.connect((host, port))
        if k == 1:
            s.sendall(HTTP_REQ)
            _read_http_response(s)
            time.sleep(0.2)
            _linger0(s)
            s.close()
        else:
            s.sendall(HTTP_REQ_CLOSE)
            while s.recv(4096):
                pass
            s.close()
        time.sleep(0.3)
    print("done", flush=True)


def helper_sink(ports: list[int]) -> None:
    """Accept on the given ports (IPv4+IPv6), read everything, never send a byte, never close."""
    socks = []
    for p in ports:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", p))
        s.listen(128)
        socks.append(s)
    print("ready", flush=True)
    conns, done = [], []
    while True:
        r, _, _ = select.select(socks + conns, [], [])
        for s in r:
            if s in socks:
                c, _ = s.accept()
                conns.append(c)
            else:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:  # EOF or reset: stop reading but never close (no FIN from the sink)
                    conns.remove(s)
                    done.append(s)


TUNSETIFF, IFF_TUN, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0001, 0x0002, 0x1000


def _tuntap(name: str, tap: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), (IFF_TAP if tap else IFF_TUN) | IFF_NO_PI))
    return fd


def _strip_tags(frame: bytes) -> bytes:
    while len(frame) > 18 and frame[12:14] in (b"\x81\x00", b"\x88\xa8"):
        frame = frame[:12] + frame[16:]
    return frame


def helper_relay(mode: str) -> None:
    """A userspace wire (run in the server namespace).

    mode "tun":  tun 'ctun' <-> tun 'stun', plain copy (IP packets, capture on stun = LINKTYPE_RAW).
    mode "vlan"/"qinq": tap 'cvl' -> tag -> veth trk1 ~~wire~~ trk0 -> untag -> tap 'svl' and back.
      The tags are pushed by this relay (the kernel has no 8021q module); the captured
      interface trk0 carries the tagged frames exactly as a trunk port would.
    The orchestrator moves the client-side device into the client namespace.
    """
    if mode == "tun":
        a, b = _tuntap("ctun", False), _tuntap("stun", False)
        print("ready", flush=True)
        while True:
            r, _, _ = select.select([a, b], [], [])
            for fd in r:
                os.write(b if fd == a else a, os.read(fd, 65536))
    tags = {"vlan": b"\x81\x00" + struct.pack("!H", 100),
            "qinq": b"\x88\xa8" + struct.pack("!H", 200) + b"\x81\x00" + struct.pack("!H", 300)}[mode]
    ctap, stap = _tuntap("cvl", True), _tuntap("svl", True)
    ETH_P_ALL = 3
    t1 = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    t1.bind(("trk1", ETH_P_ALL))
    t0 = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    t0.bind(("trk0", ETH_P_ALL))
    print("ready", flush=True)
    def tag(f: bytes) -> bytes:
        return f[:12] + tags + f[12:]
    while True:
        r, _, _ = select.select([ctap, stap, t0, t1], [], [])
        for x in r:
            if x == ctap:
                t1.send(tag(os.read(ctap, 65536)))
            elif x == stap:
                t0.send(tag(os.read(stap, 65536)))
            else:
                data, addr = x.recvfrom(65536)
                if addr[2] == socket.PACKET_OUTGOING:
                    continue
                os.write(ctap if x is t1 else stap, _strip_tags(data))


# ----------------------------------------------------------------------------------------
# independent pcap / pcapng reader and classifier (derives the MANIFEST numbers)
# ----------------------------------------------------------------------------------------

def read_capture(path: Path) -> list[tuple[float, int, bytes]]:
    """Return [(timestamp, linktype, frame)] for pcap / pcapng, optionally .gz / .xz."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    elif path.suffix == ".xz":
        raw = lzma.decompress(raw)
    out = []
    magic = raw[:4]
    if magic == b"\x0a\x0d\x0d\x0a":  # pcapng
        off, bo, ifaces = 0, "<", []
        while off + 12 <= len(raw):
            btype = struct.unpack(bo + "I", raw[off:off + 4])[0]
            if btype == 0x0A0D0D0A:
                bo = "<" if raw[off + 8:off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                ifaces = []
            blen = struct.unpack(bo + "I", raw[off + 4:off + 8])[0]
            body = raw[off + 8:off + blen - 4]
            if btype == 1:  # IDB
                lt = struct.unpack(bo + "H", body[:2])[0]
                res, o = 1e-6, 8
                while o + 4 <= len(body):
                    code, olen = struct.unpack(bo + "HH", body[o:o + 4])
                    if code == 0:
                        break
                    if code == 9:
                        v = body[o + 4]
                        res = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
                    o += 4 + ((olen + 3) & ~3)
                ifaces.append((lt, res))
            elif btype == 6:  # EPB
                iid, hi, lo, caplen, _ = struct.unpack(bo + "IIIII", body[:20])
                lt, res = ifaces[iid]
                out.append((((hi << 32) | lo) * res, lt, body[20:20 + caplen]))
            off += blen
        return out
    for bo in ("<", ">"):
        m = struct.unpack(bo + "I", magic)[0]
        if m in (0xA1B2C3D4, 0xA1B23C4D):
            scale = 1e-6 if m == 0xA1B2C3D4 else 1e-9
            break
    else:
        raise ValueError(f"{path}: not a pcap/pcapng file")
    lt = struct.unpack(bo + "I", raw[20:24])[0] & 0xFFFF
    off = 24
    while off + 16 <= len(raw):
        sec, frac, caplen, _ = struct.unpack(bo + "IIII", raw[off:off + 16])
        out.append((sec + frac * scale, lt, raw[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return out


def l3(lt: int, f: bytes) -> bytes | None:
    """Strip the link layer; return the IP packet (or None for non-IP)."""
    if lt == 1:  # Ethernet, any number of 802.1Q / 802.1ad tags
        et, o = struct.unpack("!H", f[12:14])[0], 14
        while et in (0x8100, 0x88A8, 0x9100):
            et, o = struct.unpack("!H", f[o + 2:o + 4])[0], o + 4
        return f[o:] if et in (0x0800, 0x86DD) else None
    if lt == 113:  # Linux cooked v1
        return f[16:] if f[14:16] in (b"\x08\x00", b"\x86\xdd") else None
    if lt == 276:  # Linux cooked v2
        return f[20:] if f[0:2] in (b"\x08\x00", b"\x86\xdd") else None
    if lt in (101, 12, 14, 228, 229):  # raw IP
        return f
    if lt == 239:  # NFLOG: 4-byte header then TLVs (host byte order), payload = type 9
        o = 4
        while o + 4 <= len(f):
            tlen, ttype = struct.unpack("<HH", f[o:o + 4])
            if tlen < 4:
                return None
            if ttype == 9:
                return f[o + 4:o + tlen]
            o += (tlen + 3) & ~3
        return None
    raise ValueError(f"unsupported linktype {lt}")


def tcp_fields(ip: bytes) -> dict | None:
    v = ip[0] >> 4
    if v == 4:
        ihl = (ip[0] & 15) * 4
        if ip[9] != 6:
            return None
        total, ipid, ttl = struct.unpack("!H", ip[2:4])[0], struct.unpack("!H", ip[4:6])[0], ip[8]
        src, dst, t = socket.inet_ntop(socket.AF_INET, ip[12:16]), socket.inet_ntop(socket.AF_INET, ip[16:20]), ip[ihl:]
        l4len = total - ihl
    elif v == 6:
        if ip[6] != 6:
            return None
        l4len, ipid, ttl = struct.unpack("!H", ip[4:6])[0], None, ip[7]
        src, dst, t = socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40]), ip[40:]
    else:
        return None
    if len(t) < 20:
        return None
    sp, dp, seq, ack, offflags, win = struct.unpack("!HHIIHH", t[:16])
    doff = (offflags >> 12) * 4
    if doff < 20:
        raise ValueError("malformed TCP header in capture")
    fl = offflags & 0x3F
    return dict(src=src, dst=dst, sp=sp, dp=dp, seq=seq, ack=ack, win=win, ttl=ttl, ipid=ipid,
                fin=bool(fl & 1), syn=bool(fl & 2), rst=bool(fl & 4), psh=bool(fl & 8), ackf=bool(fl & 16),
                plen=l4len - doff, optlen=doff - 20, dstraw=ip[16:20] if v == 4 else None)


def is_syn(p: dict) -> bool:
    """A SYN opens a connection: SYN set, ACK and RST clear."""
    return p["syn"] and not p["ackf"] and not p["rst"]


def is_data(p: dict) -> bool:
    return not p["syn"] and not p["rst"] and (p["psh"] or p["plen"] > 0)


def classify(pkts: list[dict], timed_out: bool) -> dict:
    """Stage, tags and signature of one connection (its <= 10 client packets), SPEC 5.

    `timed_out`: the connection did not end (no RST, no FIN, < 10 packets) and its last packet lies
    >= 10 s before its cutoff. Packets are a set; where order matters it comes from sequence numbers.
    """
    rsts = [p for p in pkts if p["rst"] and not p["ackf"]]
    rstacks = [p for p in pkts if p["rst"] and p["ackf"]]
    non_rst = [p for p in pkts if not p["rst"]]
    fin = any(p["fin"] for p in pkts)
    data_seqs = sorted({p["seq"] for p in non_rst if is_data(p)})
    ndata = len(data_seqs)
    tags: list[str] = []
    sig = None
    if rsts or rstacks:
        tags.append("reset")
        if ndata >= 2:
            stage = "later_in_flow"
        elif ndata == 1:
            stage = "post_psh"
        elif any(not p["syn"] and p["ackf"] for p in non_rst):
            stage = "post_ack"
        else:  # only SYN(s), or packets without ACK (a bare FIN shows no progress past the SYN)
            stage = "post_syn"
        if fin:
            tags.append("fin")
        nr, nra = len(rsts), len(rstacks)
        acktag = None
        if nr and nra:
            tags.append("rst_and_rstacks")
        elif nr == 1:
            tags.append("single_rst")
        elif nr > 1:
            acks = [p["ack"] for p in rsts]
            if len(set(acks)) == 1:
                acktag = "acknumsame0" if acks[0] == 0 else "acknumsame"
            else:
                acktag = "acknumdiff0" if 0 in acks else "acknumdiff"
            tags += ["multiple_rsts", acktag]
        elif nra == 1:
            tags.append("single_rstack")
        else:
            tags.append("multiple_rstacks")
        if not fin:
            if stage == "post_syn":
                sig = "SYN→RST;RST+ACK" if nr and nra else ("SYN→RST" if nr else "SYN→RST+ACK")
            elif stage == "post_ack":
                if nr and nra:
                    sig = None
                elif nr:
                    sig = "SYN;ACK→RST" if nr == 1 else "SYN;ACK→RST;RST"
                else:
                    sig = "SYN;ACK→RST+ACK" if nra == 1 else "SYN;ACK→RST+ACK;RST+ACK"
            elif stage == "post_psh":
                if nr and nra:
                    sig = "PSH+ACK→RST;RST+ACK"
                elif nra:
                    sig = "PSH+ACK→RST+ACK" if nra == 1 else "PSH+ACK→RST+ACK;RST+ACK"
                elif nr == 1:
                    sig = "PSH+ACK→RST"
                else:
                    sig = {"acknumsame": "PSH+ACK→RST=RST", "acknumsame0": "PSH+ACK→RST=RST",
                           "acknumdiff": "PSH+ACK→RST≠RST", "acknumdiff0": "PSH+ACK→RST;RST0"}[acktag]
            else:
                sig = None if (nr and nra) else ("PSH+ACK;Data→RST" if nr else "PSH+ACK;Data→RST+ACK")
        return {"stage": stage, "tags": tags, "signature": sig}
    if not timed_out:  # ended by a FIN or by its 10th packet, without RST
        return {"stage": "no_match", "tags": tags, "signature": None}
    tags.append("timeout")
    isn = pkts[0]["seq"]

    def rel(x: int) -> int:  # sequence-number order, relative to the SYN's ISN
        return (x - isn) % (1 << 32)

    later = [p for p in pkts if not p["syn"]]
    if not later:
        stage, sig = "post_syn", "SYN→∅"
    elif ndata == 0 and all(p["ackf"] for p in later) and len({p["ack"] for p in later}) == 1:
        stage, sig = "post_ack", "SYN;ACK→∅"  # only the handshake ACK (retransmissions of it allowed)
    elif ndata == 1 and all(rel(p["seq"]) <= rel(data_seqs[0]) for p in later):
        stage, sig = "post_psh", "PSH+ACK→∅"  # the first data packet, and nothing after it in sequence space
    else:
        stage, sig = "no_match", None         # e.g. a keep-alive client that ACKed the response, then quiet
    return {"stage": stage, "tags": tags, "signature": sig}


def analyse(path: Path, single_window: bool = True) -> dict:
    """The expected results for one capture file (SPEC 4: the blog's method, exactly).

    Direction: the endpoint that received the first SYN of an endpoint pair is the server; only
    client->server packets are used. Per 4-tuple, in capture order:
    * no connection of the tuple in the packet's 15-minute window: a SYN opens one, anything else is
      `no_syn` (ignored);
    * open connection that has not ended (no RST, no FIN, < 10 packets): the packet joins it, whatever
      it is (a second SYN, same or new seq, makes it `multi_syn`);
    * ended (RST or FIN seen) and still collecting: a packet >= 10 s after its latest packet seals it
      (then see below); otherwise a SYN with a new seq opens a new connection and anything else joins
      (up to 10 packets);
    * sealed (10 packets, or the grace rule): a SYN with a new seq opens a new connection, anything
      else is `after_close` (ignored).
    Decision: multi_syn (>= 2 SYNs) is excluded; an ended connection is classified; one that has not
    ended times out when its last packet lies >= 10 s before min(window end, end of input), else it is
    `incomplete` (excluded). End of input: the timestamp of the file's last frame of any kind.
    """
    frames = read_capture(path)
    if not frames:
        raise RuntimeError(f"{path}: empty capture")
    end = max(ts for ts, _, _ in frames)
    pkts = []
    for ts, lt, frame in frames:  # capture order, never re-sorted
        ip = l3(lt, frame)
        if ip is None or len(ip) < 20:
            continue
        t = tcp_fields(ip)
        if t:
            t["ts"] = ts
            pkts.append(t)
    if not pkts:
        raise RuntimeError(f"{path}: no TCP packets")
    if single_window and len({int(p["ts"] // WINDOW) for p in pkts}) != 1:
        raise RuntimeError(f"{path}: capture straddles a 15-minute window boundary")
    server_of: dict = {}   # unordered endpoint pair -> server endpoint (receiver of the pair's first SYN)
    current: dict = {}     # 4-tuple -> its latest connection
    conns: list[dict] = []
    facts: Counter = Counter()
    for p in pkts:
        a, b = (p["src"], p["sp"]), (p["dst"], p["dp"])
        pair = frozenset((a, b))
        if pair not in server_of:
            if not is_syn(p):
                continue  # direction not known yet
            server_of[pair] = b
        if server_of[pair] != b:
            continue  # server -> client
        key = (p["src"], p["sp"], p["dst"], p["dp"])
        win = int(p["ts"] // WINDOW)
        syn = is_syn(p)
        if syn:
            facts["client_syn_packets"] += 1
        c = current.get(key)
        if c is not None and c["window"] != win:
            c = None  # a connection only holds packets of its own window
        if c is not None and not c["ended"]:
            c["pkts"].append(p)  # joins, whatever it is
            c["ended"] = p["rst"] or p["fin"] or len(c["pkts"]) >= MAX_PKTS
            c["sealed"] = len(c["pkts"]) >= MAX_PKTS
            continue
        if c is not None and not c["sealed"] and p["ts"] - max(q["ts"] for q in c["pkts"]) >= GRACE:
            c["sealed"] = True  # grace period over
        new_syn = syn and c is not None and p["seq"] not in {q["seq"] for q in c["pkts"] if is_syn(q)}
        if c is not None and not c["sealed"] and not new_syn:
            c["pkts"].append(p)  # ended, still collecting (e.g. a further RST)
            c["sealed"] = len(c["pkts"]) >= MAX_PKTS
            continue
        if c is None and not syn:
            facts["no_syn_packets"] += 1
            continue
        if c is not None and not new_syn:
            facts["after_close_packets"] += 1
            continue
        # a new connection: no connection in this window, or a SYN with a new seq after the last one ended
        c = {"key": key, "window": win, "pkts": [p], "ended": False, "sealed": False}
        current[key] = c
        conns.append(c)
        facts["connections_opened"] += 1
        if p["ipid"] == 54321 and p["win"] == 65535:
            facts["zmap_syns"] += 1
        if p["dstraw"] is not None and p["seq"] == struct.unpack("!I", p["dstraw"])[0]:
            facts["mirai_syns_seq_eq_dst"] += 1
        if p["ipid"] is not None and p["ipid"] == (struct.unpack("!I", p["dstraw"])[0] ^ p["dp"] ^ p["seq"]) & 0xFFFF:
            facts["masscan_ipid_syns"] += 1
    expect = {"connections": 0, "stages": dict.fromkeys(["post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"], 0),
              "tags": Counter(), "signatures": Counter(), "excluded": Counter()}
    detail = []
    for c in conns:
        ps = c["pkts"]
        last = max(q["ts"] for q in ps)
        ended = any(q["rst"] or q["fin"] for q in ps) or len(ps) >= MAX_PKTS
        if sum(1 for q in ps if is_syn(q)) >= 2:
            expect["excluded"]["multi_syn"] += 1
            detail.append((c["key"], f"excluded:multi_syn ({len(ps)} packets)"))
            continue
        timed_out = False
        if not ended:
            cutoff = min((c["window"] + 1) * WINDOW, end)
            if cutoff - last < GRACE:
                expect["excluded"]["incomplete"] += 1
                detail.append((c["key"], f"excluded:incomplete (last packet {cutoff - last:.1f} s before the cutoff)"))
                continue
            timed_out = True
        r = classify(ps, timed_out)
        s = ps[0]
        if s["win"] == 65535 and (s["ipid"] == 54321 or s["optlen"] <= 4):
            r["tags"].append("zmap")
        expect["connections"] += 1
        expect["stages"][r["stage"]] += 1
        expect["tags"].update(r["tags"])
        if r["signature"]:
            expect["signatures"][r["signature"]] += 1
        detail.append((c["key"], r))
    for k in ("tags", "signatures", "excluded"):
        expect[k] = dict(sorted(expect[k].items()))
    return {"expect": expect, "facts": dict(sorted(facts.items())), "detail": detail,
            "duration": end - min(ts for ts, _, _ in frames)}


# ----------------------------------------------------------------------------------------
# topology
# ----------------------------------------------------------------------------------------

class Topology:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.bg: list[Background] = []

    @staticmethod
    def cleanup_namespaces() -> None:
        for ns in (CLI, SRV):
            if sh(f"ip netns list | grep -qw {ns}", check=False).returncode == 0:
                for pid in sh(f"ip netns pids {ns}", check=False).stdout.split():
                    # only processes left in OUR namespaces by an earlier run of this script
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.3)
                sh(f"ip netns del {ns}", check=False)

    def up(self) -> None:
        self.cleanup_namespaces()
        for ns in (CLI, SRV):
            sh(f"ip netns add {ns}")
            nsx(ns, "ip link set lo up")
            for conf in ("all", "default"):  # no IPv6 router solicitations / DAD noise in the captures
                nsx(ns, f"sysctl -qw net.ipv6.conf.{conf}.router_solicitations=0 net.ipv6.conf.{conf}.accept_dad=0")
        nsx(CLI, f"ip link add cli0 address {CLI_MAC} type veth peer name srv0 address {SRV_MAC}")
        nsx(CLI, f"ip link set srv0 netns {SRV}")
        for ns, dev, a4, a6 in ((CLI, "cli0", C4, C6), (SRV, "srv0", S4, S6)):
            nsx(ns, f"ethtool -K {dev} tx off rx off tso off gso off gro off")
            nsx(ns, f"ethtool -K {dev} rxvlan off txvlan off", check=False)
            nsx(ns, f"ip addr add {a4}/24 dev {dev}")
            nsx(ns, f"ip -6 addr add {a6}/64 dev {dev} nodad")
            nsx(ns, f"ip link set {dev} up")
            nsx(ns, "sysctl -qw net.ipv4.tcp_timestamps=1")
        # Port 8081 (sink) is the "SYN-ACK lost" port for the whole run: the client drops every SYN-ACK
        # from it, so the server's SYN-ACK retransmissions (up to ~60 s) never trigger client RSTs
        # that would leak into later captures.
        nsx(CLI, "iptables -A INPUT -p tcp --sport 8081 --tcp-flags SYN,ACK SYN,ACK -j DROP")
        # static neighbours: no ARP/ND needed (and zmap/masscan know the gateway MAC)
        nsx(CLI, f"ip neigh replace {S4} lladdr {SRV_MAC} dev cli0 nud permanent")
        nsx(SRV, f"ip neigh replace {C4} lladdr {CLI_MAC} dev srv0 nud permanent")
        nsx(CLI, f"ip -6 neigh replace {S6} lladdr {SRV_MAC} dev cli0 nud permanent")
        nsx(SRV, f"ip -6 neigh replace {C6} lladdr {CLI_MAC} dev srv0 nud permanent")
        (self.tmp / "nginx.conf").write_text(NGINX_CONF.format(d=self.tmp))
        self.bg.append(Background(["ip", "netns", "exec", SRV, "nginx", "-c", str(self.tmp / "nginx.conf"),
                                   "-p", str(self.tmp)], name="nginx"))
        self.bg.append(Background(helper(SRV, "_sink", *map(str, SINK_PORTS)), ready="ready", name="sink"))
        for _ in range(50):
            if nsx(CLI, f"curl -s -o /dev/null --max-time 1 http://{S4}/", check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"nginx did not come up: {(self.tmp / 'error.log').read_text() if (self.tmp / 'error.log').exists() else ''}")
        time.sleep(11)  # let the readiness probe age out of any capture

    def down(self) -> None:
        for b in reversed(self.bg):
            b.stop()
        self.cleanup_namespaces()


# ----------------------------------------------------------------------------------------
# scenarios: each makes traffic while a capture runs and says what it did
# ----------------------------------------------------------------------------------------

def tcpdump(dev: str, path: Path, *opts: str) -> list[str]:
    return ["tcpdump", "-i", dev, "-nn", "-s", "200", "-U", "-Z", "root", *opts, "-w", str(path)]


WORKLOAD_CURLS = 14


def workload(host: str = S4, n: int = WORKLOAD_CURLS) -> str:
    """Ordinary later traffic: n curl GETs to nginx 1 s apart, each connection closed with FIN by curl.

    It keeps the capture going for ~n s after the scenario's idle connections went quiet, as real
    traffic on a server does, so those are >= 10 s older than the end of the capture (timeouts).
    """
    url = f"http://[{host}]/" if ":" in host else f"http://{host}/"
    curl(url, n, extra="-6 -g" if ":" in host else "", gap=1.0)
    return (f" Then an ordinary workload: {n} x `curl {url}` 1 s apart (nginx, each closed with FIN: {n} no_match), "
            f"so the capture goes on for ~{n} s after the quiet connections' last packets.")


def sc_http_ok(ctx):
    curl(f"http://{S4}/", 8)
    return "8 x `curl http://10.99.0.2/` (nginx), one connection each, closed gracefully with FIN by curl."


def sc_abort_post_ack(ctx):
    client("abort_ack", S4, 80, 6)
    client("reuse_port", S4, 80, 2, 40000)
    return ("6 python clients connect to nginx:80 and close at once with SO_LINGER(1,0) (Linux sends RST+ACK); "
            "then 2 more the same way from the SAME client port 40000 (port reuse: new SYN, new ISN, new connection).")


def sc_abort_post_psh(ctx):
    client("abort_psh", S4, 8080, 4)
    client("abort_psh_reply", S4, 80, 4)
    return ("4 clients send one HTTP request segment to the sink on :8080 (never answers) and abort at once "
            "(SO_LINGER 0 -> RST+ACK); 4 clients send one request to nginx:80, read the reply (the kernel ACKs it), "
            "wait 0.2 s and abort (RST+ACK).")


def sc_abort_later(ctx):
    client("abort_later", S4, 8080, 4, 3)
    client("fin_abort", S4, 8080, 2, 2)
    client("abort_later", S4, 8080, 2, 12)
    return ("To the sink :8080 with TCP_NODELAY: 4 clients send 3 data segments 50 ms apart then abort (RST+ACK); "
            "2 clients send 2 segments, shutdown(SHUT_WR) (FIN) then abort (RST+ACK); 2 clients send 12 segments "
            "then abort, so the RST is the 15th client packet and only SYN, ACK and 8 data segments count.")


def sc_idle_timeouts(ctx):
    client("syn_only", S4, 8081, 2)
    ctx["hold"] = [Background(helper(CLI, "_client", "idle_ack", S4, "8080", "2"), ready="ready"),
                   Background(helper(CLI, "_client", "idle_psh", S4, "8080", "2"), ready="ready"),
                   Background(helper(CLI, "_client", "idle_reply", S4, "80", "2"), ready="ready")]
    return ("Client-ns iptables drops SYN-ACKs from :8081 (whole run) and 2 python connects to :8081 give up after 0.5 s "
            "(one SYN each, before the 1 s SYN RTO); 2 clients connect to the sink :8080 and stay silent; 2 send one "
            "request to the sink and stay silent; 2 send a request to nginx:80, read the reply (kernel ACKs it) and "
            "stay silent. All sockets stay open until the capture has stopped." + workload())


def sc_nmap_syn(ctx):
    nsx(CLI, f"nmap -sS -Pn -n -p 21,22,25,80,443,3306,5432,8080 --max-retries 0 {S4}", timeout=120)
    return ("`nmap -sS -Pn -n -p 21,22,25,80,443,3306,5432,8080 --max-retries 0 10.99.0.2`; open: 22,80,443,8080 "
            "(nginx + sink), closed: 21,25,3306,5432. Captured with `tcpdump -Q in` (client->server only). Open ports: "
            "SYN, server SYN-ACK, client kernel RST (nmap uses a raw socket; nmap itself sent no RST). Closed ports: only "
            "the SYN is seen (server RST+ACK not captured), i.e. SYN→∅ timeouts." + workload())


def sc_zmap(ctx):
    nsx(CLI, f"zmap -q -p 80 -i cli0 -S {C4} -G {SRV_MAC} -b /dev/null -P 3 -r 20 -c 3 {S4}/32", timeout=120)
    return ("`zmap -p 80 -i cli0 -S 10.99.0.1 -G <server MAC> -b /dev/null -P 3 -r 20 -c 3 10.99.0.2/32` (zmap 2.1.1: "
            "3 probes = 3 source ports, IP ID 54321, window 65535); nginx answers SYN-ACK, the client kernel RSTs.")


def sc_hping3(ctx):
    nsx(CLI, f"hping3 -q -S -p 80 -c 5 -i u300000 {S4}", check=False)
    nsx(CLI, f"hping3 -q -S -p 81 -c 5 -i u300000 {S4}", check=False)
    return ("`hping3 -S -p 80 -c 5` (open, nginx: SYN-ACK then the client kernel's RST) and `hping3 -S -p 81 -c 5` "
            "(closed: server RST+ACK, nothing more from the client); hping3 increments the source port per probe. "
            "Captured with `tcpdump -Q in`." + workload())


def sc_synack_dropped(ctx):
    procs = [subprocess.Popen(["ip", "netns", "exec", CLI, "curl", "-s", "-o", "/dev/null", "--connect-timeout", t,
                               f"http://{S4}:8081/"]) for t in ("2.5", "2.5", "2.5", "4.5", "4.5")]
    for p in procs:
        p.wait()
    return ("Client-ns iptables drops SYN-ACKs from :8081 (the sink); 5 parallel `curl http://10.99.0.2:8081/` curls with --connect-timeout 2.5 (x3) and 4.5 (x2): "
            "the kernel retransmits the SYN with the same ISN every ~1 s (Linux 6.x net.ipv4.tcp_syn_linear_timeouts=4), so 3 or 5 SYNs per connection and nothing "
            "else from the client (the dropped SYN-ACKs never reach the socket, so no RST).")


def sc_nflog(ctx):
    curl(f"http://{S4}/", 4)
    client("abort_ack", S4, 80, 1)
    client("abort_later", S4, 80, 1, 3)
    return ("Server-ns iptables `-A INPUT -p tcp --dport 80 -j NFLOG --nflog-group 5 --nflog-size 128`, captured with "
            "`tcpdump -i nflog:5` (linktype NFLOG, ingress only): 4 curl to nginx, 1 linger abort after the handshake, "
            "1 client sending 3 segments to nginx then aborting.")


def sc_cooked(ctx):
    curl(f"http://{S4}/", 4)
    client("abort_ack", S4, 80, 2)
    client("abort_psh", S4, 8080, 2)
    return "4 curl to nginx, 2 linger aborts after the handshake, 2 aborts after one request to the sink :8080."


def sc_ipv6(ctx):
    curl(f"http://[{S6}]/", 4, extra="-6 -g")
    client("abort_ack", S6, 80, 2)
    client("abort_psh", S6, 8080, 2)
    return "Over IPv6 (fd99::1 -> fd99::2): 4 `curl -6` to nginx, 2 linger aborts after the handshake, 2 after one request to the sink."


def sc_pcapng(ctx):
    curl(f"http://{S4}/", 4)
    client("abort_psh", S4, 8080, 2)
    client("abort_later", S4, 8080, 2, 3)
    return "Captured by `dumpcap` (pcapng): 4 curl, 2 aborts after one request (sink), 2 aborts after 3 segments (sink)."


def sc_tunnel(ctx):
    host = ctx["server_ip"]
    curl(f"http://{host}/", 3)
    client("abort_ack", host, 80, 2)
    client("abort_later", host, 8080, 1, 3)
    return f"Through the link to {host}: 3 curl, 2 aborts after the handshake, 1 abort after 3 segments to the sink."


def sc_incomplete(ctx):
    ctx["hold"].append(Background(helper(CLI, "_client", "idle_ack", S4, "8080", "1"), ready="ready"))
    curl(f"http://{S4}/", 12, gap=1.0)
    ctx["hold"].append(Background(helper(CLI, "_client", "idle_ack", S4, "8080", "2"), ready="ready"))
    curl(f"http://{S4}/", 1)
    return ("1 client connects to the sink :8080 and stays silent (SYN, ACK); 12 `curl http://10.99.0.2/` 1 s apart "
            "(FIN); 2 more clients connect to the sink and stay silent; 1 last curl (FIN); the capture stops ~1 s later. "
            "The first idle connection is >= 10 s older than the end (a Post-ACK timeout); the 2 late ones are within "
            "10 s of the end and have not ended (incomplete); the last curl ended with FIN, so it is classified "
            "although it lies within 10 s of the end.")


def sc_mirai(ctx):
    seq = struct.unpack("!I", socket.inet_aton(S4))[0]
    nsx(CLI, f"hping3 -q -S -M {seq} -p 23 -c 4 -i u300000 {S4}", check=False)
    nsx(CLI, f"hping3 -q -S -M {seq} -p 2323 -c 2 -i u300000 {S4}", check=False)
    return (f"Mirai-style SYNs with hping3 -M {seq} (sequence number = destination IPv4 address 10.99.0.2 as u32): "
            "4 to :23 (open, sink: SYN-ACK then client kernel RST), 2 to :2323 (closed: server RST+ACK, not captured)."
            + workload())


def sc_masscan(ctx):
    # masscan 1.3.2 finishes the scan but then hangs in its receive thread on a quiet veth;
    # like a user at the terminal we stop it with Ctrl-C (twice) once the scan and --wait are over.
    p = subprocess.Popen(["ip", "netns", "exec", CLI, "masscan", S4, "-p22,80,443,81", "--adapter", "cli0",
                          "--adapter-ip", C4, "--adapter-mac", CLI_MAC, "--router-mac", SRV_MAC,
                          "--rate", "20", "--wait", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        for _ in range(2):
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                pass
        else:
            p.kill()
            p.wait()
    return ("`masscan 10.99.0.2 -p22,80,443,81 --adapter cli0 --adapter-ip 10.99.0.1 --router-mac <server MAC> "
            "--rate 20 --wait 3` (stopped with Ctrl-C: it hangs after the scan); 22/80/443 open, 81 closed. Observed: "
            "on open ports BOTH masscan (TTL 255, win 1200) and the client kernel (TTL 64) send a RST (two RSTs, ack "
            "field 0); on closed port 81 masscan answers the server's RST+ACK with its own RST. SYN IP IDs follow "
            "masscan's dst-ip ^ dst-port ^ seq rule, TTL 255, window 1024.")


def sc_graceful_short(ctx):
    curl(f"http://{S4}/", 5)
    return ("5 x `curl http://10.99.0.2/` 0.3 s apart (nginx), each closed with FIN by curl; the capture stops ~1 s "
            "after the last packet, so every connection lies within 10 s of the end: ended connections are classified "
            "however close to the end they are.")


def sc_linger_aborts(ctx):
    client("abort_ack", S4, 80, 1)
    client("abort_psh", S4, 8080, 1)
    client("abort_later", S4, 8080, 1, 3)
    return ("3 python clients abort with SO_LINGER(1,0) (RST+ACK): one right after the handshake (nginx :80), one "
            "after one request segment (sink :8080), one after 3 data segments (sink, TCP_NODELAY); the capture stops "
            "~1 s after the last RST.")


def sc_pause_then_fin(ctx):
    p = subprocess.Popen(helper(CLI, "_client", "pause_fin", S4, "80", "1", "30"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    curl(f"http://{S4}/", 6, gap=4.5)
    if p.wait(timeout=60) != 0:
        raise RuntimeError(f"pause_fin client failed: {p.stderr.read()}")
    return ("A python client connects to nginx :80, sends one request, reads the reply (its kernel ACKs it), pauses "
            "30 s and closes the socket: FIN (nothing unread, so no RST), then ACKs nginx's FIN. Meanwhile 6 "
            "`curl http://10.99.0.2/` ~4.5 s apart (FIN). One graceful connection with a 30 s gap: no inactivity "
            "timer, so no timeout; 7 no_match.")


def sc_syn_retries(ctx):
    old = {k: nsx(CLI, f"sysctl -n net.ipv4.{k}").stdout.strip() for k in ("tcp_syn_retries", "tcp_syn_linear_timeouts")}
    ctx["cleanup"] += [f"ip netns exec {CLI} sysctl -qw net.ipv4.{k}={v}" for k, v in old.items()]
    nsx(CLI, "sysctl -qw net.ipv4.tcp_syn_retries=5 net.ipv4.tcp_syn_linear_timeouts=0")
    nsx(SRV, f"iptables -A INPUT -p tcp --dport {BLACKHOLE_PORT} -j DROP")
    nsx(CLI, f"curl -s -o /dev/null --connect-timeout 33 http://{S4}:{BLACKHOLE_PORT}/", check=False, timeout=60)
    return (f"Server-ns iptables `-A INPUT -p tcp --dport {BLACKHOLE_PORT} -j DROP` (a blackholed port: tcpdump still "
            "sees the SYNs, the server never answers); client ns `net.ipv4.tcp_syn_retries=5`, "
            "`net.ipv4.tcp_syn_linear_timeouts=0` (classic exponential backoff); one "
            f"`curl --connect-timeout 33 http://10.99.0.2:{BLACKHOLE_PORT}/`: the kernel sends the SYN at 0 s and "
            "retransmits it with the same ISN at ~1, 3, 7, 15 and 31 s (gaps 1, 2, 4, 8, 16 s), then curl gives up. "
            "One connection with 6 SYNs: multi_syn, however far apart its SYNs are; no Post-SYN timeouts.")


def sc_port_reuse(ctx):
    out = run_helper(CLI, "_port_reuse", S4, "80", "41000", "12", timeout=60)
    if "done" not in out:
        raise RuntimeError(f"port_reuse helper: {out}")
    return ("Three connections from the SAME client port 41000 to nginx :80 (SO_REUSEADDR + bind; each SYN has a new "
            "ISN): 1. `Connection: close` request, nginx answers and closes, the client closes: FIN; 2. 1 s later "
            "(within the 10 s grace period of the first): request, reply, SO_LINGER(1,0) abort: RST+ACK; 3. 12 s "
            "later (the second is sealed by then): like the first, FIN. 3 classified connections on one 4-tuple in one "
            "15-minute window.")


def sc_keepalive_idle(ctx):
    ctx["hold"] = [Background(helper(CLI, "_client", "idle_reply", S4, "80", "1"), ready="ready")]
    return ("An HTTP/1.1 keep-alive python client sends one request to nginx :80, reads the reply (its kernel ACKs it) "
            "and goes quiet, socket open (nginx keepalive_timeout 120 s)." + workload())


# ----------------------------------------------------------------------------------------
# fixture table
# ----------------------------------------------------------------------------------------

STAGES = ("post_syn", "post_ack", "post_psh", "later_in_flow", "no_match")


def F(name, fn, ext="pcap", cap="both", server_ip=S4, ports=(80,), made_by="", est=40, hint=None):
    """A fixture. `hint`: what the scenario was designed to produce; every stage not listed is 0,
    `excluded` (multi_syn / incomplete) is exact, `tags` lists the tag counts checked. The oracle's
    result must equal it, or the fixture fails."""
    return dict(name=name, fn=fn, ext=ext, cap=cap, server_ip=server_ip, ports=list(ports), made_by=made_by,
                est=est, hint=hint or {})


W = WORKLOAD_CURLS  # connections of the later curl workload (all no_match)
FIXTURES = [
    F("http_ok", sc_http_ok, made_by="tcpdump -i srv0 + nginx + curl", hint={"no_match": 8}),
    F("abort_post_ack", sc_abort_post_ack, made_by="tcpdump -i srv0 + python SO_LINGER(1,0)",
      hint={"post_ack": 8, "tags": {"reset": 8, "single_rstack": 8}}),
    F("abort_post_psh", sc_abort_post_psh, ports=(80, 8080), made_by="tcpdump -i srv0 + python SO_LINGER(1,0)",
      hint={"post_psh": 8, "tags": {"reset": 8, "single_rstack": 8}}),
    F("abort_later", sc_abort_later, ports=(8080,), made_by="tcpdump -i srv0 + python TCP_NODELAY/SO_LINGER(1,0)",
      hint={"later_in_flow": 6, "no_match": 2, "tags": {"reset": 6, "fin": 2}}),
    F("idle_timeouts", sc_idle_timeouts, ports=(80, 8080, 8081), est=60,
      made_by="tcpdump -i srv0 + python sockets left idle + a curl workload",
      hint={"post_syn": 2, "post_ack": 2, "post_psh": 2, "no_match": 2 + W, "tags": {"timeout": 8}}),
    F("nmap_syn", sc_nmap_syn, cap="in", ports=(21, 22, 25, 80, 443, 3306, 5432, 8080), est=80,
      made_by="tcpdump -Q in -i srv0 + nmap -sS + a curl workload",
      hint={"post_syn": 8, "no_match": W, "tags": {"reset": 4, "timeout": 4}}),
    F("zmap", sc_zmap, made_by="tcpdump -i srv0 + zmap 2.1.1", hint={"post_syn": 3, "tags": {"zmap": 3}}, est=60),
    F("hping3", sc_hping3, cap="in", ports=(80, 81), est=60, made_by="tcpdump -Q in -i srv0 + hping3 -S + a curl workload",
      hint={"post_syn": 10, "no_match": W, "tags": {"reset": 5, "timeout": 5}}),
    F("synack_dropped", sc_synack_dropped, ports=(8081,),
      made_by="tcpdump -i srv0 + curl, SYN-ACKs dropped by iptables in the client ns", hint={"excluded": {"multi_syn": 5}}),
    F("nflog", sc_nflog, cap="nflog", made_by="tcpdump -i nflog:5 (iptables NFLOG in the server ns)",
      hint={"no_match": 4, "post_ack": 1, "later_in_flow": 1}),
    F("cooked_sll2", sc_cooked, cap="any", ports=(80, 8080), made_by="tcpdump -i any (LINUX_SLL2) in the server ns",
      hint={"no_match": 4, "post_ack": 2, "post_psh": 2}),
    F("cooked_sll", sc_cooked, cap="any_sll", ports=(80, 8080), made_by="tcpdump -i any -y LINUX_SLL in the server ns",
      hint={"no_match": 4, "post_ack": 2, "post_psh": 2}),
    F("ipv6", sc_ipv6, server_ip=S6, ports=(80, 8080), made_by="tcpdump -i srv0 + curl -6 + python over IPv6",
      hint={"no_match": 4, "post_ack": 2, "post_psh": 2}),
    F("pcapng", sc_pcapng, ext="pcapng", cap="dumpcap", ports=(80, 8080), made_by="dumpcap -i srv0 (pcapng)",
      hint={"no_match": 4, "post_psh": 2, "later_in_flow": 2}),
    F("vlan_8021q", sc_tunnel, cap="vlan", server_ip="10.99.13.2", ports=(80, 8080),
      made_by="tcpdump -i trk0 (802.1Q VLAN 100 trunk, tags pushed by the userspace relay)",
      hint={"no_match": 3, "post_ack": 2, "later_in_flow": 1}),
    F("vlan_qinq", sc_tunnel, cap="qinq", server_ip="10.99.23.2", ports=(80, 8080),
      made_by="tcpdump -i trk0 (802.1ad 200 + 802.1Q 300 trunk, tags pushed by the userspace relay)",
      hint={"no_match": 3, "post_ack": 2, "later_in_flow": 1}),
    F("rawip", sc_tunnel, cap="tun", server_ip="10.99.14.2", ports=(80, 8080), made_by="tcpdump -i stun (tun device, LINKTYPE_RAW)",
      hint={"no_match": 3, "post_ack": 2, "later_in_flow": 1}),
    F("incomplete", sc_incomplete, ports=(80, 8080), made_by="tcpdump -i srv0, stopped ~1 s after the last packets",
      hint={"post_ack": 1, "no_match": 13, "excluded": {"incomplete": 2}, "tags": {"timeout": 1}}),
    F("mirai", sc_mirai, cap="in", ports=(23, 80, 2323), est=60,
      made_by="tcpdump -Q in -i srv0 + hping3 -S -M <dst ip as u32> + a curl workload",
      hint={"post_syn": 6, "no_match": W, "tags": {"reset": 4, "timeout": 2}}),
    F("masscan", sc_masscan, ports=(22, 80, 81, 443), made_by="tcpdump -i srv0 + masscan 1.3.2", est=60,
      hint={"post_syn": 4, "tags": {"reset": 4}}),
    F("graceful_short", sc_graceful_short, made_by="tcpdump -i srv0 + curl, stopped ~1 s after the last packet",
      hint={"no_match": 5}),
    F("linger_aborts", sc_linger_aborts, ports=(80, 8080),
      made_by="tcpdump -i srv0 + python SO_LINGER(1,0), stopped ~1 s after the last RST",
      hint={"post_ack": 1, "post_psh": 1, "later_in_flow": 1, "tags": {"reset": 3, "single_rstack": 3}}),
    F("pause_then_fin", sc_pause_then_fin, est=60, made_by="tcpdump -i srv0 + python client pausing 30 s before its FIN + curl",
      hint={"no_match": 7, "tags": {"timeout": 0}}),
    F("syn_retries", sc_syn_retries, ports=(BLACKHOLE_PORT,), est=60,
      made_by="tcpdump -i srv0 + curl to a port the server ns DROPs (tcp_syn_retries=5, exponential backoff)",
      hint={"excluded": {"multi_syn": 1}}),
    F("port_reuse", sc_port_reuse, est=40, made_by="tcpdump -i srv0 + python sockets bound to one client port",
      hint={"no_match": 2, "post_psh": 1, "tags": {"reset": 1, "single_rstack": 1}}),
    F("keepalive_idle", sc_keepalive_idle, est=40, made_by="tcpdump -i srv0 + idle HTTP/1.1 keep-alive client + curl",
      hint={"no_match": 1 + W, "tags": {"timeout": 1}}),
]


def hint_problems(hint: dict, expect: dict) -> list[str]:
    """Differences between a scenario's design and the oracle's reading of its capture."""
    problems = []
    want = {st: hint.get(st, 0) for st in STAGES}
    if want != expect["stages"]:
        problems.append(f"stages: designed {want}, capture {expect['stages']}")
    if hint.get("excluded", {}) != expect["excluded"]:
        problems.append(f"excluded: designed {hint.get('excluded', {})}, capture {expect['excluded']}")
    for tag, n in hint.get("tags", {}).items():
        if expect["tags"].get(tag, 0) != n:
            problems.append(f"tag {tag}: designed {n}, capture {expect['tags'].get(tag, 0)}")
    return problems


class HintMismatch(RuntimeError):
    pass


def run_fixture(fx: dict, out: Path, tmp: Path) -> dict:
    """Capture one scenario into tmp, derive its expectation, check it against the design hint, and only
    then move the file into `out` (a failed fixture leaves the committed file and manifest entry alone)."""
    name = fx["name"]
    final, path = out / f"{name}.{fx['ext']}", tmp / f"{name}.{fx['ext']}"
    log(f"fixture {name} -> {final}")
    wait_for_safe_window(fx["est"])
    cleanup_cmds: list[str] = [f"ip netns exec {SRV} iptables -F INPUT"]
    ctx: dict = {"server_ip": fx["server_ip"], "hold": [], "cleanup": cleanup_cmds}
    relay = None
    cap_dev = "srv0"
    try:
        if fx["cap"] == "tun":
            relay = Background(helper(SRV, "_relay", "tun"), ready="ready", name="relay")
            nsx(SRV, f"ip link set ctun netns {CLI}")
            nsx(CLI, "ip addr add 10.99.14.1 peer 10.99.14.2 dev ctun")
            nsx(SRV, "ip addr add 10.99.14.2 peer 10.99.14.1 dev stun")
            nsx(CLI, "ip link set ctun up")
            nsx(SRV, "ip link set stun up")
            cap_dev = "stun"
            cleanup_cmds += [f"ip netns exec {CLI} ip link del ctun", f"ip netns exec {SRV} ip link del stun"]
        elif fx["cap"] in ("vlan", "qinq"):
            net = "10.99.13" if fx["cap"] == "vlan" else "10.99.23"
            nsx(SRV, "ip link add trk0 type veth peer name trk1")
            for d in ("trk0", "trk1"):
                nsx(SRV, f"ethtool -K {d} tx off rx off tso off gso off gro off")
                nsx(SRV, f"ethtool -K {d} rxvlan off txvlan off", check=False)
                nsx(SRV, f"sysctl -qw net.ipv6.conf.{d}.disable_ipv6=1")
                nsx(SRV, f"ip link set {d} mtu 1600 up")
            relay = Background(helper(SRV, "_relay", fx["cap"]), ready="ready", name="relay")
            nsx(SRV, f"ip link set cvl netns {CLI}")
            for ns, dev, me, mac in ((CLI, "cvl", 1, "02:99:00:00:13:01"), (SRV, "svl", 2, "02:99:00:00:13:02")):
                nsx(ns, f"sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")
                nsx(ns, f"ip link set {dev} address {mac} mtu 1400")
                nsx(ns, f"ip addr add {net}.{me}/24 dev {dev}")
                nsx(ns, f"ip link set {dev} up")
            nsx(CLI, f"ip neigh replace {net}.2 lladdr 02:99:00:00:13:02 dev cvl nud permanent")
            nsx(SRV, f"ip neigh replace {net}.1 lladdr 02:99:00:00:13:01 dev svl nud permanent")
            cap_dev = "trk0"
            cleanup_cmds += [f"ip netns exec {CLI} ip link del cvl", f"ip netns exec {SRV} ip link del svl",
                             f"ip netns exec {SRV} ip link del trk0"]
        elif fx["cap"] == "nflog":
            # --nflog-size 128: headers only; tcpdump must NOT get -s here (libpcap sizes its netlink
            # buffer from the snaplen and a small one truncates batched NFLOG messages)
            nsx(SRV, "iptables -A INPUT -p tcp --dport 80 -j NFLOG --nflog-group 5 --nflog-size 128")
        if relay:
            time.sleep(1)
            nsx(CLI, f"ping -c 1 -W 2 {fx['server_ip']}", check=False)  # warm up (ICMP only)
        argv = {
            "both": tcpdump(cap_dev, path), "vlan": tcpdump(cap_dev, path), "qinq": tcpdump(cap_dev, path),
            "tun": tcpdump(cap_dev, path), "in": tcpdump(cap_dev, path, "-Q", "in"),
            "nflog": ["tcpdump", "-i", "nflog:5", "-nn", "-U", "-Z", "root", "-w", str(path)], "any": tcpdump("any", path, "-y", "LINUX_SLL2"),
            "any_sll": tcpdump("any", path, "-y", "LINUX_SLL"),
            "dumpcap": ["dumpcap", "-i", cap_dev, "-s", "200", "-w", str(path)],
        }[fx["cap"]]
        if path.exists():
            path.unlink()
        cap = Capture(argv, path)
        try:
            what = fx["fn"](ctx)
            time.sleep(0.5)  # + 0.5 s in stop(): the capture ends ~1 s after the scenario's last packet
        finally:
            cap.stop()
    finally:
        for b in ctx["hold"]:
            b.stop()
        if relay:
            relay.stop()
        for c in cleanup_cmds:
            sh(c, check=False)
    os.chmod(path, 0o644)
    res = analyse(path)
    log(f"  {name}: {json.dumps(res['expect'], ensure_ascii=False)} facts={res['facts']}")
    problems = hint_problems(fx["hint"], res["expect"])
    if problems:
        keep = Path(tempfile.gettempdir()) / f"rsfx-failed-{path.name}"
        shutil.copyfile(path, keep)
        for k, v in res["detail"]:
            log(f"    {k} {v}")
        raise HintMismatch(f"{name}: the capture does not give what the scenario was designed to produce: "
                           f"{'; '.join(problems)} (capture kept as {keep})")
    lt = read_capture(path)[0][1]
    entry = {"file": final.name, "linktype": lt, "made_by": fx["made_by"], "server_ip": fx["server_ip"],
             "server_ports": sorted(fx["ports"]), "expect": res["expect"], "notes": what,
             "facts": {"capture_seconds": round(res["duration"], 1), **res["facts"]}}
    shutil.move(str(path), final)
    return entry


def compressed_copies(out: Path, src_name: str, base_entry: dict) -> list[dict]:
    src = out / src_name
    data = src.read_bytes()
    entries = []
    for ext, comp in (("gz", lambda d: gzip.compress(d, 9, mtime=0)), ("xz", lambda d: lzma.compress(d, preset=9))):
        dst = out / f"{src_name}.{ext}"
        dst.write_bytes(comp(data))
        e = json.loads(json.dumps(base_entry))
        e["file"] = dst.name
        assert analyse(dst)["expect"] == e["expect"]
        e["made_by"] = f"{'gzip -9n' if ext == 'gz' else 'xz -9'} copy of {src_name} (same packets)"
        e["notes"] = f"Byte-identical packets to {src_name}, compressed. " + e["notes"]
        entries.append(e)
    return entries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures", type=Path)
    ap.add_argument("--only", default="", help="comma-separated fixture names (others keep their manifest entries)")
    ap.add_argument("--analyse", nargs="*", help="only print the derived expectations of existing capture files")
    args = ap.parse_args()
    if args.analyse:
        for f in args.analyse:
            r = analyse(Path(f), single_window=False)
            print(f, json.dumps(r["expect"], ensure_ascii=False), r["facts"])
            for k, v in r["detail"]:
                print("   ", k, v)
        return 0
    if os.geteuid() != 0:
        sys.exit("make_fixtures.py must run as root (namespaces, raw sockets, iptables)")
    for tool in ("ip", "ethtool", "iptables", "tcpdump", "dumpcap", "curl", "nginx", "nmap", "zmap", "hping3", "masscan"):
        if not shutil.which(tool):
            sys.exit(f"missing tool: {tool} (see the docstring for the Debian packages)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    only = [x for x in args.only.split(",") if x]
    unknown = set(only) - {f["name"] for f in FIXTURES}
    if unknown:
        sys.exit(f"unknown fixtures: {unknown}")
    manifest_path = out / "MANIFEST.json"
    old = {}
    if only and manifest_path.exists():
        old = {e["file"]: e for e in json.loads(manifest_path.read_text())["fixtures"]}
    entries: dict[str, dict] = dict(old)
    order = {f"{f['name']}.{f['ext']}": i for i, f in enumerate(FIXTURES)}

    def write_manifest() -> None:  # after every fixture, so a failure keeps what was made
        fixtures = sorted(entries.values(), key=lambda e: (order.get(e["file"].removesuffix(".gz").removesuffix(".xz"), 99), e["file"]))
        manifest_path.write_text(json.dumps({
            "generator": "scripts/make_fixtures.py",
            "rules": ("docs/fixtures.md; SPEC 4-5: 15-minute windows, first 10 client packets, no inactivity timer; "
                      "not ended and last packet >= 10 s before min(window end, last frame): timeout, else incomplete; "
                      "grace 10 s after an RST/FIN"),
            "fixtures": fixtures}, indent=2, ensure_ascii=False) + "\n")
        log(f"wrote {manifest_path} ({len(fixtures)} fixtures)")

    failed: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="rsfx-"))
    os.chmod(tmp, 0o755)
    topo = Topology(tmp)
    try:
        topo.up()
        for fx in FIXTURES:
            if only and fx["name"] not in only:
                continue
            try:
                e = run_fixture(fx, out, tmp)
            except HintMismatch as exc:
                log(f"  FAILED: {exc}")
                failed.append(fx["name"])
                continue
            entries[e["file"]] = e
            if fx["name"] == "abort_post_psh":
                for c in compressed_copies(out, e["file"], e):
                    entries[c["file"]] = c
            write_manifest()
    finally:
        topo.down()
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        log(f"FAILED fixtures (not written; remake them with --only {','.join(failed)}): {failed}")
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        cmd, rest = sys.argv[1], sys.argv[2:]
        if cmd == "_client":
            helper_client(rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4:])
        elif cmd == "_port_reuse":
            helper_port_reuse(rest[0], int(rest[1]), int(rest[2]), float(rest[3]))
        elif cmd == "_sink":
            helper_sink([int(p) for p in rest])
        elif cmd == "_relay":
            helper_relay(rest[0])
        else:
            sys.exit(f"unknown helper {cmd}")
        sys.exit(0)
    sys.exit(main())
