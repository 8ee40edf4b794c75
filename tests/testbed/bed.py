#!/usr/bin/env python3
"""rstscope's tampering test bed: real kernels, real nginx/TLS, a real NFQUEUE middlebox.

    python3 scripts/testbed.py --out /tmp/bed        (as root; see docs/signatures.md)

Topology (three network namespaces, veth pairs with every offload off):

    rstb-cli  c0 ==== r0  rstb-rtr  r1 ==== s0  rstb-srv
    10.77.1.x/24          router +             10.77.2.2 (allowed), 10.77.2.3 (IP-blocklisted)
    fd77:1::x/64          middlebox.py         fd77:2::2, fd77:2::3; nginx :80 and TLS :443

* Each scenario has its OWN client source address (10.77.1.10+i or fd77:1::10+i); the middlebox
  (tests/testbed/middlebox.py) maps that address to a tampering style, so labels join rstscope's
  records by 4-tuple and every scenario runs in parallel with the others.
* Captures on the server's interface s0 (the ingress view; both directions are written, rstscope is
  told the server side with --server-ip) and, at the same time, ``tcpdump -i any`` in the server
  namespace (Linux cooked SLL2 capture).
* Every connection the bed makes gets a label (JSON line): 4-tuple, intended stage, tags, signature,
  injected. Labels are derived from what was DONE (the scenario and middlebox style), never from the
  capture or from rstscope.
* After the scenarios, ordinary traffic goes on: one graceful, labelled GET a second from 10.77.1.1 for
  ``TAIL_CONNS`` seconds, and the capture ends with it. A connection that did not end (the middlebox
  dropped what followed) is a timeout only if it was quiet for 10 s before the end of the input (SPEC
  4), and this later traffic is what makes it so, as in a real capture; nothing is appended.
* Then ``rstscope analyze CAPTURE --format json --out connections.jsonl`` per capture, a join to the
  labels, and precision / recall per signature and per stage (report.json, report.md).

Helper sub-commands of this file (run inside a namespace): ``_client SPEC_JSON``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
THIS = str(Path(__file__).resolve())
CLI, RTR, SRV = "rstb-cli", "rstb-rtr", "rstb-srv"
MAC = {"c0": "02:77:00:00:01:01", "r0": "02:77:00:00:01:fe", "r1": "02:77:00:00:02:fe", "s0": "02:77:00:00:02:02"}
SRV_OK4, SRV_BAD4, SRV_OK6, SRV_BAD6 = "10.77.2.2", "10.77.2.3", "fd77:2::2", "fd77:2::3"
BLOCKED, ALLOWED = "blocked.example", "allowed.example"
WINDOW = 900
TIMEOUT = 1.5        # client-side patience for a blocked connection before it gives up
TAIL_SRC = "10.77.1.1"  # the ordinary traffic after the scenarios (no middlebox style: passed untouched)
TAIL_CONNS = 14      # ... one graceful GET a second: the scenarios' last packets lie >= 13 s before the end
TAIL_PAUSE = 1.0
TOOLS = ("ip", "ethtool", "iptables", "ip6tables", "tcpdump", "nginx", "openssl", "rstscope")

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    keepalive_timeout 120s;
    client_header_timeout 120s;
    server {{
        listen 80;
        listen [::]:80;
        listen 443 ssl;
        listen [::]:443 ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{ return 200 "rstscope testbed\\n"; }}
    }}
}}
"""

# ----------------------------------------------------------------------------------------
# scenarios: (name, family, port, kind, middlebox style or None, how many tampered connections)
#   kind: http (one GET), tls (handshake with SNI, then GET), split (GET line, then the Host line in
#   a second segment), late (3 data segments then SO_LINGER 0: the CLIENT resets late)
#   style: trigger ip|content, action drop|pass_drop|inject, forward (inject after forwarding the
#   trigger, else instead of it), inject [[R|RA, ack mode(, seq offset, window)]...], evidence
#   unlike|ttl|ipid|mimic|gfw, seq_base start (the injected seq numbers from the trigger's first byte)
# Every scenario also makes one control connection (allowed host / allowed server address) that
# must come out as a graceful no_match.
# ----------------------------------------------------------------------------------------


def S(name, fam, port, kind, style, n=3):
    return {"name": name, "fam": fam, "port": port, "kind": kind, "style": style, "n": n}


def ip_(action, inject=(), ev="unlike"):
    return {"trigger": "ip", "action": action, "inject": [list(x) for x in inject], "evidence": ev}


def ct(action, inject=(), forward=True, ev="unlike", **extra):
    return {"trigger": "content", "action": action, "forward": forward, "inject": [list(x) for x in inject],
            "evidence": ev, **extra}


R, RA = "R", "RA"
# The GFW's injectors toward the server (docs/signatures.md, "Named middleboxes"): type-1, one RST
# without ACK with a random window (and, with evidence "gfw", a random TTL); type-2, three RST+ACKs at
# X, X+1460, X+4380 with X the trigger segment's first sequence number, windows and TTLs cycling up.
GFW1 = [(R, "ack", 0, "rand")]
GFW2 = [(RA, "ack", 0, 3293), (RA, "ack", 1460, 3294), (RA, "ack", 4380, 3295)]
GFW2_NEAR = [(RA, "ack", 0, 3293), (RA, "ack", 1460, 3294), (RA, "ack", 2920, 3295)]  # 2 x 1460: not type-2
SCENARIOS = [
    # Post-SYN: the server address is blocklisted; acted on at the handshake
    S("syn_drop", 4, 80, "http", ip_("pass_drop")),
    S("syn_rst", 4, 80, "http", ip_("inject", [(R, "srv")])),
    S("syn_rstack", 4, 443, "tls", ip_("inject", [(RA, "srv")])),
    S("syn_rst_rstack", 4, 80, "http", ip_("inject", [(R, "srv"), (RA, "srv")])),
    S("syn_rst_mimic", 4, 80, "http", ip_("inject", [(R, "srv")], ev="mimic")),
    # Post-ACK: Host / SNI trigger; the data segment is dropped (and RSTs injected instead)
    S("ack_drop", 4, 80, "http", ct("drop")),
    S("ack_drop_tls", 4, 443, "tls", ct("drop")),
    S("ack_rst", 4, 80, "http", ct("inject", [(R, "ack")], forward=False)),
    S("ack_rst_rst", 4, 443, "tls", ct("inject", [(R, "ack"), (R, "ack")], forward=False)),
    S("ack_rstack", 4, 80, "http", ct("inject", [(RA, "ack")], forward=False)),
    S("ack_rstack2", 4, 443, "tls", ct("inject", [(RA, "ack"), (RA, "ack")], forward=False)),
    S("ack_rst_ttlonly", 4, 80, "http", ct("inject", [(R, "ack")], forward=False, ev="ttl")),
    # Post-PSH: Host / SNI trigger; the data segment is forwarded, then dropping / injection
    S("psh_drop", 4, 80, "http", ct("pass_drop")),
    S("psh_drop_tls", 4, 443, "tls", ct("pass_drop")),
    S("psh_rst", 4, 443, "tls", ct("inject", [(R, "ack")])),
    S("psh_rstack", 4, 80, "http", ct("inject", [(RA, "ack")])),
    S("psh_rst_rstack", 4, 443, "tls", ct("inject", [(R, "ack"), (RA, "ack")])),
    S("psh_rstack2", 4, 80, "http", ct("inject", [(RA, "ack"), (RA, "ack")])),
    S("psh_rst_same", 4, 80, "http", ct("inject", [(R, "ack"), (R, "ack")])),
    S("psh_rst_same0", 4, 443, "tls", ct("inject", [(R, "zero"), (R, "zero")])),
    S("psh_rst_diff", 4, 443, "tls", ct("inject", [(R, "ack"), (R, "plus")])),
    S("psh_rst_rst0", 4, 80, "http", ct("inject", [(R, "ack"), (R, "zero")])),
    S("psh_rstack_mimic", 4, 80, "http", ct("inject", [(RA, "ack")], ev="mimic")),
    S("psh_rst_ipidonly", 4, 443, "tls", ct("inject", [(R, "ack")], ev="ipid")),
    # Later: the Host line comes in the second data segment; or the client itself resets late
    S("later_rst", 4, 80, "split", ct("inject", [(R, "ack")])),
    S("later_rstack", 4, 80, "split", ct("inject", [(RA, "ack")])),
    S("late_client_abort", 4, 80, "late", None),
    # IPv6 through the bed (no IP ID: only the hop limit can show an injection)
    S("v6_syn_drop", 6, 80, "http", ip_("pass_drop")),
    S("v6_syn_rstack", 6, 80, "http", ip_("inject", [(RA, "srv")])),
    S("v6_ack_rst_ipidonly", 6, 80, "http", ct("inject", [(R, "ack")], forward=False, ev="ipid")),
    S("v6_psh_rstack", 6, 443, "tls", ct("inject", [(RA, "ack")])),
    S("v6_psh_rst_mimic", 6, 80, "http", ct("inject", [(R, "ack")], ev="mimic")),
    S("v6_late_client_abort", 6, 80, "late", None),
    # Named middleboxes (issue 16): the GFW's type-1 and type-2 injectors, alone and together, and near misses
    S("gfw_type1", 4, 80, "http", ct("inject", GFW1, ev="gfw", seq_base="start")),
    S("gfw_type2", 4, 443, "tls", ct("inject", GFW2, ev="gfw", seq_base="start")),
    S("gfw_type1_type2", 4, 80, "http", ct("inject", GFW1 + GFW2, ev="gfw", seq_base="start")),
    S("gfw_type2_near_miss", 4, 80, "http", ct("inject", GFW2_NEAR, ev="gfw", seq_base="start")),
    S("rst_window_mimic", 4, 443, "tls", ct("inject", GFW1, ev="mimic")),
]


def client_addr(i: int, fam: int) -> str:
    return f"10.77.1.{10 + i}" if fam == 4 else f"fd77:1::{10 + i:x}"


# ----------------------------------------------------------------------------------------
# the intended result of each connection (from what was done; SPEC 5 / docs/method.md)
# ----------------------------------------------------------------------------------------

SIG = {
    ("post_syn", "timeout"): "SYN→∅", ("post_syn", "R"): "SYN→RST", ("post_syn", "RA"): "SYN→RST+ACK",
    ("post_syn", "R+RA"): "SYN→RST;RST+ACK",
    ("post_ack", "timeout"): "SYN;ACK→∅", ("post_ack", "R"): "SYN;ACK→RST", ("post_ack", "RR"): "SYN;ACK→RST;RST",
    ("post_ack", "RA"): "SYN;ACK→RST+ACK", ("post_ack", "RARA"): "SYN;ACK→RST+ACK;RST+ACK",
    ("post_psh", "timeout"): "PSH+ACK→∅", ("post_psh", "R"): "PSH+ACK→RST", ("post_psh", "RA"): "PSH+ACK→RST+ACK",
    ("post_psh", "R+RA"): "PSH+ACK→RST;RST+ACK", ("post_psh", "RARA"): "PSH+ACK→RST+ACK;RST+ACK",
    ("post_psh", "RR=same"): "PSH+ACK→RST=RST", ("post_psh", "RR=same0"): "PSH+ACK→RST=RST",
    ("post_psh", "RR=diff"): "PSH+ACK→RST≠RST", ("post_psh", "RR=diff0"): "PSH+ACK→RST;RST0",
    ("later_in_flow", "R"): "PSH+ACK;Data→RST", ("later_in_flow", "RA"): "PSH+ACK;Data→RST+ACK",
}


def intended(sc: dict, tampered: bool) -> dict:
    """Stage, tags, signature and injected verdict that the scenario meant for one connection."""
    st = sc["style"]
    none = {"stage": "no_match", "tags": [], "signature": None, "injected": False}
    if sc["kind"] == "late":
        if not tampered:
            return none
        return {"stage": "later_in_flow", "tags": ["reset", "single_rstack"], "signature": "PSH+ACK;Data→RST+ACK",
                "injected": False}
    if not tampered:
        return none
    if st["trigger"] == "ip":
        stage = "post_syn"
    elif sc["kind"] == "split":
        stage = "later_in_flow"
    elif st["action"] == "drop" or (st["action"] == "inject" and not st.get("forward", True)):
        stage = "post_ack"
    else:
        stage = "post_psh"
    if st["action"] in ("drop", "pass_drop"):
        return {"stage": stage, "tags": ["timeout"], "signature": SIG[(stage, "timeout")], "injected": False}
    kinds = [item[0] for item in st["inject"]]
    nr, nra = kinds.count(R), kinds.count(RA)
    tags = ["reset"]  # then exactly one composition of the resets (SPEC 5): RSTs and RST+ACKs -> both only
    if nr and nra:
        tags.append("rst_and_rstacks")
    elif nr == 1:
        tags.append("single_rst")
    elif nr > 1:
        tags.append("multiple_rsts")
        # the ack numbers the middlebox wrote: "ack"/"srv" (a real, non-zero ack), "zero", "plus" (ack + 1460*i)
        vals = []
        for i, (f, a, *_) in enumerate(st["inject"]):
            if f == R:
                vals.append(0 if a == "zero" else (1 + 1460 * i if a == "plus" else 1))
        if len(set(vals)) == 1:
            tags.append("acknumsame0" if vals[0] == 0 else "acknumsame")
        else:
            tags.append("acknumdiff0" if 0 in vals else "acknumdiff")
    elif nra == 1:
        tags.append("single_rstack")
    elif nra > 1:
        tags.append("multiple_rstacks")
    key = "R+RA" if nr and nra else "R" if nr == 1 else "RR" if nr else "RA" if nra == 1 else "RARA"
    if key == "RR" and stage == "post_psh":
        key = {"acknumsame": "RR=same", "acknumsame0": "RR=same0", "acknumdiff": "RR=diff",
               "acknumdiff0": "RR=diff0"}[tags[2]]
    ev = st.get("evidence", "unlike")
    foreign_ttl = ev in ("unlike", "ttl", "gfw")  # TTL 40 / 30-50 against the client's 63
    injected = foreign_ttl or (ev == "ipid" and sc["fam"] == 4)
    # named middleboxes, from what was injected: a plain RST with a window and a foreign TTL (type-1);
    # RST+ACKs at X, X+1460, X+4380 (type-2)
    if foreign_ttl and any(item[0] == R and (item + [0, 0])[3] != 0 for item in st["inject"]):
        tags.append("gfw_type1")
    offs = {(item + [0])[2] for item in st["inject"] if item[0] == RA}
    if any(o + 1460 in offs and o + 4380 in offs for o in offs):
        tags.append("gfw_type2")
    return {"stage": stage, "tags": tags, "signature": SIG.get((stage, key)), "injected": injected}


# ----------------------------------------------------------------------------------------
# small process helpers
# ----------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[testbed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: str | list, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {cmd}\n{r.stdout}\n{r.stderr}")
    return r


def nsx(ns: str, cmd: str, **kw) -> subprocess.CompletedProcess:
    return sh(f"ip netns exec {ns} {cmd}", **kw)


class Background:
    """A process we started (in a namespace); optionally waits for a line containing `ready`."""

    def __init__(self, argv: list[str], ready: str | None = None, timeout: float = 20, name: str = ""):
        self.name = name or argv[0]
        self.lines: list[str] = []
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ev = threading.Event()

        def pump(stream):
            for line in stream:
                self.lines.append(line.rstrip())
                if ready and ready in line:
                    ev.set()
        for s in (self.p.stdout, self.p.stderr):
            threading.Thread(target=pump, args=(s,), daemon=True).start()
        if ready and not ev.wait(timeout):
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"{self.name} not ready after {timeout}s: {self.lines}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


def missing_tools() -> list[str]:
    miss = [t for t in TOOLS if not shutil.which(t)]
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        miss.append("python package NetfilterQueue (pip install NetfilterQueue; apt libnetfilter-queue-dev)")
    return miss


def wait_for_safe_window(duration: float, guard: float) -> float:
    """Sleep until [now, now + duration] is >= guard seconds away from any multiple of 900 s."""
    slept = 0.0
    while True:
        pos = time.time() % WINDOW
        if pos >= guard and pos + duration + guard <= WINDOW:
            return slept
        wait = (WINDOW - pos) + guard if pos >= guard else guard - pos
        log(f"near a 15-minute window boundary: sleeping {wait:.0f}s")
        time.sleep(wait + 0.5)
        slept += wait + 0.5


# ----------------------------------------------------------------------------------------
# topology
# ----------------------------------------------------------------------------------------

def remove_namespaces(names: tuple[str, ...]) -> None:
    """Delete our namespaces left by an earlier run, killing what still runs in them."""
    for ns in names:
        if sh(f"ip netns list | grep -qw {ns}", check=False).returncode == 0:
            for pid in sh(f"ip netns pids {ns}", check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):  # leftovers of an earlier bed run, in OUR namespaces
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.2)
            sh(f"ip netns del {ns}", check=False)


def wire_namespaces(cli: str, rtr: str, srv: str, devs: tuple[str, str, str, str], mac: dict[str, str]) -> None:
    """client <-> router <-> server: three namespaces, two veth pairs (``devs``: client, router's client
    side, router's server side, server), every offload off (wire-size segments), no IPv6 autoconf or DAD
    noise. Addresses, routes and the links' state are the caller's."""
    c0, r0, r1, s0 = devs
    for ns in (cli, rtr, srv):
        sh(f"ip netns add {ns}")
        nsx(ns, "ip link set lo up")
        for conf in ("all", "default"):
            nsx(ns, f"sysctl -qw net.ipv6.conf.{conf}.router_solicitations=0 net.ipv6.conf.{conf}.accept_dad=0")
    nsx(cli, f"ip link add {c0} address {mac[c0]} type veth peer name {r0} address {mac[r0]}")
    nsx(cli, f"ip link set {r0} netns {rtr}")
    nsx(srv, f"ip link add {s0} address {mac[s0]} type veth peer name {r1} address {mac[r1]}")
    nsx(srv, f"ip link set {r1} netns {rtr}")
    for ns, dev in ((cli, c0), (rtr, r0), (rtr, r1), (srv, s0)):
        nsx(ns, f"ethtool -K {dev} tx off rx off tso off gso off gro off")
        nsx(ns, f"ethtool -K {dev} rxvlan off txvlan off", check=False)
        nsx(ns, f"sysctl -qw net.ipv6.conf.{dev}.accept_ra=0", check=False)


class Bed:
    def __init__(self, tmp: Path, out: Path):
        self.tmp, self.out = tmp, out
        self.bg: list[Background] = []

    @staticmethod
    def cleanup() -> None:
        remove_namespaces((CLI, RTR, SRV))

    def up(self) -> None:
        self.cleanup()
        wire_namespaces(CLI, RTR, SRV, ("c0", "r0", "r1", "s0"), MAC)
        for i, sc in enumerate(SCENARIOS):
            if sc["fam"] == 4:
                nsx(CLI, f"ip addr add {client_addr(i, 4)}/24 dev c0")
            else:
                nsx(CLI, f"ip -6 addr add {client_addr(i, 6)}/64 dev c0 nodad")
        nsx(CLI, "ip addr add 10.77.1.1/24 dev c0")
        nsx(CLI, "ip -6 addr add fd77:1::1/64 dev c0 nodad")
        nsx(RTR, "ip addr add 10.77.1.254/24 dev r0")
        nsx(RTR, "ip -6 addr add fd77:1::fe/64 dev r0 nodad")
        nsx(RTR, "ip addr add 10.77.2.254/24 dev r1")
        nsx(RTR, "ip -6 addr add fd77:2::fe/64 dev r1 nodad")
        for a in (SRV_OK4, SRV_BAD4):
            nsx(SRV, f"ip addr add {a}/24 dev s0")
        for a in (SRV_OK6, SRV_BAD6):
            nsx(SRV, f"ip -6 addr add {a}/64 dev s0 nodad")
        for ns, dev in ((CLI, "c0"), (RTR, "r0"), (RTR, "r1"), (SRV, "s0")):
            nsx(ns, f"ip link set {dev} up")
        nsx(RTR, "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
        nsx(CLI, "ip route add default via 10.77.1.254")
        nsx(CLI, "ip -6 route add default via fd77:1::fe")
        nsx(SRV, "ip route add default via 10.77.2.254")
        nsx(SRV, "ip -6 route add default via fd77:2::fe")
        # static neighbours: no ARP / ND in the captures
        nsx(CLI, f"ip neigh replace 10.77.1.254 lladdr {MAC['r0']} dev c0 nud permanent")
        nsx(CLI, f"ip -6 neigh replace fd77:1::fe lladdr {MAC['r0']} dev c0 nud permanent")
        nsx(SRV, f"ip neigh replace 10.77.2.254 lladdr {MAC['r1']} dev s0 nud permanent")
        nsx(SRV, f"ip -6 neigh replace fd77:2::fe lladdr {MAC['r1']} dev s0 nud permanent")
        for a in (SRV_OK4, SRV_BAD4):
            nsx(RTR, f"ip neigh replace {a} lladdr {MAC['s0']} dev r1 nud permanent")
        for a in (SRV_OK6, SRV_BAD6):
            nsx(RTR, f"ip -6 neigh replace {a} lladdr {MAC['s0']} dev r1 nud permanent")
        for i, sc in enumerate(SCENARIOS):
            a = client_addr(i, sc["fam"])
            nsx(RTR, f"ip {'-6 ' if sc['fam'] == 6 else ''}neigh replace {a} lladdr {MAC['c0']} dev r0 nud permanent")
        for a in ("10.77.1.1", "fd77:1::1"):
            nsx(RTR, f"ip {'-6 ' if ':' in a else ''}neigh replace {a} lladdr {MAC['c0']} dev r0 nud permanent")
        # TLS: a self-signed certificate made now
        sh(f"openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=testbed -keyout {self.tmp}/key.pem "
           f"-out {self.tmp}/cert.pem")
        (self.tmp / "nginx.conf").write_text(NGINX_CONF.format(d=self.tmp))
        self.bg.append(Background(["ip", "netns", "exec", SRV, "nginx", "-c", str(self.tmp / "nginx.conf"),
                                   "-p", str(self.tmp)], name="nginx"))
        # the middlebox: every forwarded TCP packet to / from ports 80 and 443 goes through NFQUEUE 0
        cfg = {"queue": 0, "iface": "r1", "src_mac": MAC["r1"], "dst_mac": MAC["s0"],
               "blocked_names": [BLOCKED], "blocked_ips": [SRV_BAD4, SRV_BAD6], "log": str(self.out / "middlebox.log"),
               "styles": {client_addr(i, sc["fam"]): sc["style"] for i, sc in enumerate(SCENARIOS) if sc["style"]}}
        (self.out / "middlebox.json").write_text(json.dumps(cfg, indent=1))
        self.bg.append(Background(["ip", "netns", "exec", RTR, sys.executable, str(HERE / "middlebox.py"),
                                   str(self.out / "middlebox.json")], ready="ready", name="middlebox"))
        for tool in ("iptables", "ip6tables"):
            for d in ("--dport", "--sport"):
                nsx(RTR, f"{tool} -A FORWARD -p tcp -m multiport {d} 80,443 -j NFQUEUE --queue-num 0")
        for url in (f"http://{SRV_OK4}/", f"https://{SRV_OK4}/", f"http://[{SRV_OK6}]/"):
            for _ in range(50):
                iface = "" if "[" in url else "--interface 10.77.1.1"
                if nsx(CLI, f"curl -sk -o /dev/null --max-time 1 {iface} '{url}'", check=False).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                err = (self.tmp / "error.log").read_text() if (self.tmp / "error.log").exists() else ""
                raise RuntimeError(f"{url} not reachable through the bed: {err}")

    def down(self) -> None:
        for b in reversed(self.bg):
            b.stop()
        self.cleanup()


# ----------------------------------------------------------------------------------------
# the client helper (runs in the client namespace)
# ----------------------------------------------------------------------------------------

def _linger0(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _read_response(s) -> bool:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return False
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    while len(body) < n:
        chunk = s.recv(4096)
        if not chunk:
            return False
        body += chunk
    return True


def helper_client(spec: dict) -> None:
    """Make the scenario's connections one after the other; print one JSON line per connection."""
    src, port, kind = spec["src"], spec["port"], spec["kind"]
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    for c in spec["conns"]:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((src, 0))
        cport = s.getsockname()[1]
        print(json.dumps({"i": c["i"], "client_ip": src, "client_port": cport, "server_ip": c["dst"],
                          "server_port": port}), flush=True)
        s.settimeout(TIMEOUT)
        host = c["host"]
        graceful = False
        try:
            s.connect((c["dst"], port))
            req = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rstscope-testbed\r\n\r\n".encode()
            if kind == "http":
                s.sendall(req)
                graceful = _read_response(s)
            elif kind == "split":
                s.sendall(b"GET / HTTP/1.1\r\n")
                time.sleep(0.1)
                s.sendall(f"Host: {host}\r\nUser-Agent: rstscope-testbed\r\n\r\n".encode())
                graceful = _read_response(s)
            elif kind == "late":
                if c["tampered"]:  # the client itself resets after 3 data segments
                    for k in range(3):
                        s.send(b"GET / HTTP/1.1\r\n" if k == 0 else b"X-Part-%d: x\r\n" % k)
                        time.sleep(0.05)
                    time.sleep(0.1)
                else:
                    s.sendall(req)
                    graceful = _read_response(s)
            elif kind == "tls":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                t = ctx.wrap_socket(s, server_hostname=host, do_handshake_on_connect=False)
                t.do_handshake()
                t.sendall(req)
                graceful = _read_response(t)
                s = t
        except (OSError, ssl.SSLError):
            graceful = False
        if not graceful:
            with contextlib.suppress(OSError):
                _linger0(s)
        with contextlib.suppress(OSError):
            s.close()
        time.sleep(spec.get("pause", 0.1))


# ----------------------------------------------------------------------------------------
# a run: capture, traffic (scenarios, then ordinary traffic), analysis, report
# ----------------------------------------------------------------------------------------

def run_scenario(i: int, sc: dict) -> list[dict]:
    src = client_addr(i, sc["fam"])
    ok, bad = (SRV_OK4, SRV_BAD4) if sc["fam"] == 4 else (SRV_OK6, SRV_BAD6)
    ip_trigger = bool(sc["style"]) and sc["style"]["trigger"] == "ip"
    conns = []
    for k in range(sc["n"] + 1):
        tampered = k < sc["n"]
        conns.append({"i": k, "tampered": tampered,
                      "dst": bad if (tampered and ip_trigger) else ok,
                      "host": BLOCKED if (tampered and sc["kind"] != "late" and not ip_trigger) else ALLOWED})
    spec = {"src": src, "dst": ok, "port": sc["port"], "kind": sc["kind"], "conns": conns}
    return run_client(sc, spec, timeout=60)


def run_tail() -> list[dict]:
    """The ordinary traffic after the scenarios: TAIL_CONNS graceful GETs, TAIL_PAUSE apart, labelled."""
    sc = {"name": "ordinary_tail", "fam": 4, "port": 80, "kind": "http", "style": None}
    conns = [{"i": k, "tampered": False, "dst": SRV_OK4, "host": ALLOWED} for k in range(TAIL_CONNS)]
    spec = {"src": TAIL_SRC, "dst": SRV_OK4, "port": 80, "kind": "http", "conns": conns, "pause": TAIL_PAUSE}
    return run_client(sc, spec, timeout=60 + TAIL_CONNS * TAIL_PAUSE)


def run_client(sc: dict, spec: dict, timeout: float) -> list[dict]:
    """Run the client in its namespace on ``spec`` (its connections in ``spec["conns"]``) and label
    every connection it made with the scenario ``sc`` and what the connection was meant to be."""
    r = subprocess.run(["ip", "netns", "exec", CLI, sys.executable, THIS, "_client", json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"client {sc['name']} failed: {r.stdout} {r.stderr}")
    conns = spec["conns"]
    labels = []
    for line in r.stdout.splitlines():
        made = json.loads(line)
        c = conns[made.pop("i")]
        labels.append({"scenario": sc["name"], **made, "ip_version": sc["fam"], "tampered": c["tampered"],
                       "host": c["host"], "style": sc["style"], **intended(sc, c["tampered"])})
    return labels


def tcpdump(dev: str, path: Path, *opts: str) -> list[str]:
    return ["ip", "netns", "exec", SRV, "tcpdump", "-i", dev, "-nn", "-s", "200", "-U", "--immediate-mode",
            "-Z", "root", *opts, "-w", str(path)]


def analyze(capture: Path, out: Path) -> list[dict]:
    sh(["rstscope", "analyze", str(capture), "--format", "json", "--out", str(out),
        "--server-ip", "10.77.2.0/24,fd77:2::/64"], timeout=120)
    return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]


def key4(d: dict) -> tuple:
    return (d["client_ip"], int(d["client_port"]), d["server_ip"], int(d["server_port"]))


def compare(labels: list[dict], records: list[dict]) -> dict:
    """Join by 4-tuple; precision / recall per signature and per stage; every mismatch listed."""
    recs = {key4(r): r for r in records}
    lab = {key4(x): x for x in labels}
    mism, pairs = [], []
    for k, x in lab.items():
        r = recs.get(k)
        got = ({"stage": r["stage"], "tags": sorted(r["tags"]), "signature": r["signature"], "injected": r["injected"]}
               if r else {"stage": "missing", "tags": [], "signature": "missing", "injected": None})
        want = {"stage": x["stage"], "tags": sorted(x["tags"]), "signature": x["signature"], "injected": x["injected"]}
        pairs.append((want, got))
        if want != got:
            mism.append({"scenario": x["scenario"], "tuple": list(k), "expected": want, "got": got,
                         "ttl_delta": r and r.get("ttl_delta"), "ipid_delta": r and r.get("ipid_delta")})
    extra = [r for k, r in recs.items() if k not in lab]
    for r in extra:  # records the bed did not make (there should be none): count as false positives
        pairs.append(({"stage": "unlabelled", "signature": "unlabelled", "injected": None, "tags": []},
                      {"stage": r["stage"], "signature": r["signature"], "injected": r["injected"], "tags": r["tags"]}))

    def pr(field: str) -> dict:
        vals = sorted({str(w[field]) for w, _ in pairs} | {str(g[field]) for _, g in pairs}
                      - {"unlabelled", "missing"})
        res = {}
        for v in vals:
            tp = sum(1 for w, g in pairs if str(w[field]) == v and str(g[field]) == v)
            fp = sum(1 for w, g in pairs if str(w[field]) != v and str(g[field]) == v)
            fn = sum(1 for w, g in pairs if str(w[field]) == v and str(g[field]) != v)
            res[v] = {"labelled": tp + fn, "detected": tp + fp, "tp": tp,
                      "precision": round(tp / (tp + fp), 4) if tp + fp else None,
                      "recall": round(tp / (tp + fn), 4) if tp + fn else None}
        return res
    def per_tag() -> dict:
        res = {}
        for t in sorted({t for w, g in pairs for t in (*w["tags"], *g["tags"])}):
            tp = sum(1 for w, g in pairs if t in w["tags"] and t in g["tags"])
            fp = sum(1 for w, g in pairs if t not in w["tags"] and t in g["tags"])
            fn = sum(1 for w, g in pairs if t in w["tags"] and t not in g["tags"])
            res[t] = {"labelled": tp + fn, "detected": tp + fp, "tp": tp,
                      "precision": round(tp / (tp + fp), 4) if tp + fp else None,
                      "recall": round(tp / (tp + fn), 4) if tp + fn else None}
        return res
    return {"labels": len(labels), "records": len(records), "matched": len(labels) - len(mism),
            "unlabelled_records": len(extra), "mismatches": mism,
            "per_signature": pr("signature"), "per_stage": pr("stage"), "per_injected": pr("injected"),
            "per_tag": per_tag()}


def report_md(rep: dict) -> str:
    lines = ["# rstscope test bed report", "", f"captures: {', '.join(rep['captures'])}; connections labelled: "
             f"{rep['labels']}; runtime {rep['runtime_s']} s", ""]
    for cap, c in rep["results"].items():
        lines += [f"## {cap}: {c['matched']}/{c['labels']} labels matched, "
                  f"{c['unlabelled_records']} unlabelled records", "",
                  "| signature | connections | detected | precision | recall |", "|---|---|---|---|---|"]
        for k, v in c["per_signature"].items():
            lines.append(f"| {k} | {v['labelled']} | {v['detected']} | {v['precision']} | {v['recall']} |")
        lines += ["", "| stage | connections | detected | precision | recall |", "|---|---|---|---|---|"]
        for k, v in c["per_stage"].items():
            lines.append(f"| {k} | {v['labelled']} | {v['detected']} | {v['precision']} | {v['recall']} |")
        lines += ["", "| injected | connections | detected | precision | recall |", "|---|---|---|---|---|"]
        for k, v in c["per_injected"].items():
            lines.append(f"| {k} | {v['labelled']} | {v['detected']} | {v['precision']} | {v['recall']} |")
        lines += ["", "| tag | connections | detected | precision | recall |", "|---|---|---|---|---|"]
        for k, v in c["per_tag"].items():
            lines.append(f"| {k} | {v['labelled']} | {v['detected']} | {v['precision']} | {v['recall']} |")
        if c["mismatches"]:
            lines += ["", "Mismatches:", ""] + [f"- {json.dumps(m, ensure_ascii=False)}" for m in c["mismatches"]]
        lines.append("")
    return "\n".join(lines)


def run(out: Path, guard: float = 90.0, workers: int = 12) -> dict:
    """Build the bed, make every scenario's traffic under capture, analyse, compare. Returns the report."""
    if os.geteuid() != 0:
        raise PermissionError("the test bed needs root (network namespaces, iptables, raw sockets)")
    miss = missing_tools()
    if miss:
        raise FileNotFoundError("missing: " + ", ".join(miss))
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    for f in ("middlebox.log",):
        (out / f).unlink(missing_ok=True)
    tmp = Path(sh("mktemp -d /tmp/rstb-XXXXXX").stdout.strip())
    os.chmod(tmp, 0o755)
    bed = Bed(tmp, out)
    cap_eth, cap_any = out / "bed.pcap", out / "bed_any.pcap"
    labels: list[dict] = []
    waited = 0.0
    try:
        bed.up()
        waited = wait_for_safe_window(50, guard)
        caps = [Background(tcpdump("s0", cap_eth), ready="listening on", name="tcpdump s0"),
                Background(tcpdump("any", cap_any, "-y", "LINUX_SLL2"), ready="listening on",
                           name="tcpdump any")]
        time.sleep(0.5)
        try:
            with ThreadPoolExecutor(workers) as ex:
                for res in ex.map(lambda a: run_scenario(*a), enumerate(SCENARIOS)):
                    labels += res
            log(f"scenarios done: {len(labels)} connections; ordinary traffic for {TAIL_CONNS * TAIL_PAUSE:.0f} s")
            labels += run_tail()
            time.sleep(1.0)  # the last packets reach tcpdump's files (-U: written as they come)
        finally:
            for c in caps:
                rc = c.stop(signal.SIGINT)
                drops = [ln for ln in c.lines if "dropped by kernel" in ln and not ln.startswith("0 ")]
                if rc not in (0, None) or drops:
                    raise RuntimeError(f"{c.name}: exit {rc} {c.lines}")
    finally:
        bed.down()
        shutil.rmtree(tmp, ignore_errors=True)
    with open(out / "labels.jsonl", "w") as fh:
        for x in labels:
            fh.write(json.dumps(x, ensure_ascii=False) + "\n")
    results = {}
    for cap in (cap_eth, cap_any):
        recs = analyze(cap, out / (cap.stem + ".connections.jsonl"))
        results[cap.name] = compare(labels, recs)
    rep = {"captures": [cap_eth.name, cap_any.name], "labels": len(labels), "runtime_s": round(time.time() - t0, 1),
           "window_wait_s": round(waited, 1),
           "scenarios": [s["name"] for s in SCENARIOS],
           "labelled_signatures": dict(Counter(str(x["signature"]) for x in labels)),
           "labelled_tags": dict(Counter(t for x in labels for t in x["tags"])), "results": results}
    (out / "report.json").write_text(json.dumps(rep, indent=1, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(report_md(rep))
    return rep


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_client":
        helper_client(json.loads(sys.argv[2]))
        sys.exit(0)
    sys.exit("use scripts/testbed.py")
