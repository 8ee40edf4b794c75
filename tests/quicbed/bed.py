"""rstscope's QUIC test bed (issue 17): real aioquic endpoints, a real NFQUEUE middlebox that decrypts
client Initials the way censors do, a real capture on the server's interface, and labels.

    python3 scripts/quicbed.py --out /tmp/quicbed        (as root; see docs/quic-bed.md)

Topology (three network namespaces, veth pairs with every offload off; names and ranges of its own so
it runs alongside the TCP bed of tests/testbed/):

    qb-cli  qc0 ==== qr0  qb-rtr  qr1 ==== qs0  qb-srv
    10.78.1.x/24          router +              10.78.2.2 (allowed), 10.78.2.3 (IP-blocklisted)
    fd78:1::x/64          middlebox.py          fd78:2::2, fd78:2::3; aioquic echo server, UDP 443

* Each scenario has its OWN client source address (10.78.1.10+i or fd78:1::10+i); the middlebox
  (tests/quicbed/middlebox.py) maps that address to a blocking style; each client connection has its
  own UDP socket, so labels join the capture by client address and port (and the original DCID).
* One capture, ``quicbed.pcap``: tcpdump on the server's interface qs0 (Ethernet, full packets, both
  directions): what the server sees.
* Every connection gets a label (labels.jsonl), derived from what the bed DID (the scenario, the
  client's own report, the middlebox's per-flow record of what it forwarded and dropped), never from
  the capture.
* After the scenarios, ordinary traffic goes on (one completed connection a second from 10.78.1.1,
  ``tail`` of them), so the scenarios' last packets lie >= 10 s before the end of the capture, as in
  the TCP bed: a flow that went quiet is a timeout, not "incomplete".

The endpoints are tests/quicbed/endpoints.py (aioquic), the middlebox tests/quicbed/middlebox.py.
"""

from __future__ import annotations

import datetime
import importlib.util
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.testbed.bed import Background, log, nsx, remove_namespaces, wait_for_safe_window, wire_namespaces

ROOT = Path(__file__).resolve().parents[2]
CLI, RTR, SRV = "qb-cli", "qb-rtr", "qb-srv"
MAC = {"qc0": "02:78:00:00:01:01", "qr0": "02:78:00:00:01:fe", "qr1": "02:78:00:00:02:fe",
       "qs0": "02:78:00:00:02:02"}
SRV_OK4, SRV_BAD4, SRV_OK6, SRV_BAD6 = "10.78.2.2", "10.78.2.3", "fd78:2::2", "fd78:2::3"
BLOCKED, ALLOWED = "blocked.example", "allowed.example"
TAIL_SRC = "10.78.1.1"
QUEUE = 78
IDLE_TIMEOUT = 2.0     # the client's QUIC idle timeout (the server's is longer; the smaller one rules)
SERVER_IDLE = 5.0
RESERVED_VERSION = 0x1A2A3A4A  # a reserved version (RFC 9000 section 15: 0x?a?a?a?a): the server answers VN
TOOLS = ("ip", "ethtool", "iptables", "ip6tables", "tcpdump")

# scenario: name, IP version, kind (echo | abort_initial | vn), requests per treated connection,
# middlebox style (or None), target of the treated connections (sni: SNI blocked.example to the
# allowed server; ip: SNI allowed.example to the blocklisted server address; None: nothing blocked).
# Each scenario makes ``conns`` treated connections and then one control (SNI allowed.example to the
# allowed server address, one request) that must complete.


def S(name: str, fam: int, kind: str, style: dict[str, str] | None, target: str | None,
      requests: int = 1) -> dict[str, Any]:
    return {"name": name, "fam": fam, "kind": kind, "style": style, "target": target, "requests": requests}


SCENARIOS: list[dict[str, Any]] = [
    S("completed", 4, "echo", None, None, requests=3),
    S("sni_drop", 4, "echo", {"trigger": "sni", "action": "pass_drop"}, "sni"),
    S("sni_drop_return", 4, "echo", {"trigger": "sni", "action": "drop_return"}, "sni"),
    S("udp_drop_after_first", 4, "echo", {"trigger": "ip", "action": "pass_drop"}, "ip"),
    S("drop_after_handshake", 4, "echo", {"trigger": "sni", "action": "after_handshake", "strip_coalesced": "yes"},
      "sni"),
    S("drop_after_handshake_coalesced", 4, "echo", {"trigger": "sni", "action": "after_handshake"}, "sni"),
    S("client_abort_initial", 4, "abort_initial", None, None),
    S("version_negotiation", 4, "vn", None, None),
    S("v6_completed", 6, "echo", None, None, requests=3),
    S("v6_sni_drop", 6, "echo", {"trigger": "sni", "action": "pass_drop"}, "sni"),
]


def client_addr(i: int, fam: int) -> str:
    return f"10.78.1.{10 + i}" if fam == 4 else f"fd78:1::{10 + i:x}"


def missing_tools() -> list[str]:
    miss = [t for t in TOOLS if not shutil.which(t)]
    for mod, why in (("netfilterqueue", "python package NetfilterQueue (apt libnetfilter-queue-dev)"),
                     ("aioquic", "python package aioquic"), ("cryptography", "python package cryptography")):
        if importlib.util.find_spec(mod) is None:
            miss.append(why)
    return miss


def make_cert(d: Path) -> tuple[Path, Path]:
    """A self-signed EC certificate for both names, made now (the clients do not verify it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rstscope quic bed")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(ALLOWED), x509.DNSName(BLOCKED)]), False)
            .sign(key, hashes.SHA256()))
    cp, kp = d / "cert.pem", d / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


def py_module(ns: str, module: str, arg: str) -> list[str]:
    return ["ip", "netns", "exec", ns, "env", f"PYTHONPATH={ROOT}", sys.executable, "-m", module, arg]


# ----------------------------------------------------------------------------------------
# topology
# ----------------------------------------------------------------------------------------

class Bed:
    def __init__(self, tmp: Path, out: Path):
        self.tmp, self.out = tmp, out
        self.bg: list[Background] = []

    @staticmethod
    def cleanup() -> None:
        remove_namespaces((CLI, RTR, SRV))

    def up(self) -> None:
        self.cleanup()
        wire_namespaces(CLI, RTR, SRV, ("qc0", "qr0", "qr1", "qs0"), MAC)
        clients = [client_addr(i, sc["fam"]) for i, sc in enumerate(SCENARIOS)] + [TAIL_SRC]
        for a in clients:
            nsx(CLI, f"ip addr add {a}/24 dev qc0" if ":" not in a else f"ip -6 addr add {a}/64 dev qc0 nodad")
        nsx(RTR, "ip addr add 10.78.1.254/24 dev qr0")
        nsx(RTR, "ip -6 addr add fd78:1::fe/64 dev qr0 nodad")
        nsx(RTR, "ip addr add 10.78.2.254/24 dev qr1")
        nsx(RTR, "ip -6 addr add fd78:2::fe/64 dev qr1 nodad")
        for a in (SRV_OK4, SRV_BAD4):
            nsx(SRV, f"ip addr add {a}/24 dev qs0")
        for a in (SRV_OK6, SRV_BAD6):
            nsx(SRV, f"ip -6 addr add {a}/64 dev qs0 nodad")
        for ns, dev in ((CLI, "qc0"), (RTR, "qr0"), (RTR, "qr1"), (SRV, "qs0")):
            nsx(ns, f"ip link set {dev} up")
        nsx(RTR, "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
        nsx(CLI, "ip route add default via 10.78.1.254")
        nsx(CLI, "ip -6 route add default via fd78:1::fe")
        nsx(SRV, "ip route add default via 10.78.2.254")
        nsx(SRV, "ip -6 route add default via fd78:2::fe")
        # static neighbours: no ARP / ND in the capture
        nsx(CLI, f"ip neigh replace 10.78.1.254 lladdr {MAC['qr0']} dev qc0 nud permanent")
        nsx(CLI, f"ip -6 neigh replace fd78:1::fe lladdr {MAC['qr0']} dev qc0 nud permanent")
        nsx(SRV, f"ip neigh replace 10.78.2.254 lladdr {MAC['qr1']} dev qs0 nud permanent")
        nsx(SRV, f"ip -6 neigh replace fd78:2::fe lladdr {MAC['qr1']} dev qs0 nud permanent")
        for a in (SRV_OK4, SRV_BAD4, SRV_OK6, SRV_BAD6):
            nsx(RTR, f"ip {'-6 ' if ':' in a else ''}neigh replace {a} lladdr {MAC['qs0']} dev qr1 nud permanent")
        for a in clients:
            nsx(RTR, f"ip {'-6 ' if ':' in a else ''}neigh replace {a} lladdr {MAC['qc0']} dev qr0 nud permanent")
        # the QUIC server: aioquic, UDP 443 on the allowed and the blocked addresses
        cert, key = make_cert(self.tmp)
        srv = {"addresses": [SRV_OK4, SRV_BAD4, SRV_OK6, SRV_BAD6], "cert": str(cert), "key": str(key),
               "idle_timeout": SERVER_IDLE}
        self.bg.append(Background(py_module(SRV, "tests.quicbed.endpoints", "server") + [json.dumps(srv)],
                                  ready="ready", name="quic server"))
        # the middlebox: every forwarded UDP packet to / from port 443 goes through NFQUEUE
        cfg = {"queue": QUEUE, "blocked_names": [BLOCKED], "blocked_ips": [SRV_BAD4, SRV_BAD6],
               "log": str(self.out / "middlebox.log"), "flows": str(self.out / "middlebox.flows.json"),
               "styles": {client_addr(i, sc["fam"]): sc["style"] for i, sc in enumerate(SCENARIOS) if sc["style"]}}
        (self.out / "middlebox.json").write_text(json.dumps(cfg, indent=1))
        self.bg.append(Background(py_module(RTR, "tests.quicbed.middlebox", str(self.out / "middlebox.json")),
                                  ready="ready", name="middlebox"))
        for tool in ("iptables", "ip6tables"):
            for d in ("--dport", "--sport"):
                nsx(RTR, f"{tool} -A FORWARD -p udp {d} 443 -j NFQUEUE --queue-num {QUEUE}")

    def down(self) -> None:
        for b in reversed(self.bg):
            b.stop()
        for tool in ("iptables", "ip6tables"):  # the namespace goes with its rules; flush anyway
            nsx(RTR, f"{tool} -F FORWARD", check=False)
        self.cleanup()


# ----------------------------------------------------------------------------------------
# traffic and labels
# ----------------------------------------------------------------------------------------

def conn_spec(k: int, dst: str, sni: str, sc: dict[str, Any], treated: bool) -> dict[str, Any]:
    mode = "abort_initial" if treated and sc["kind"] == "abort_initial" else "echo"
    versions = [RESERVED_VERSION, 1] if treated and sc["kind"] == "vn" else [1]
    return {"i": k, "dst": dst, "sni": sni, "mode": mode, "requests": sc["requests"] if treated else 1,
            "versions": versions, "idle_timeout": IDLE_TIMEOUT}


def run_client(sc: dict[str, Any], src: str, conns: list[dict[str, Any]], treated: list[bool],
               pause: float = 0.1) -> list[dict[str, Any]]:
    """Run the scenario's connections in the client namespace; one label per connection (without the
    middlebox's part, added by ``finish_labels``)."""
    spec = {"src": src, "conns": conns, "pause": pause}
    timeout = 30 + len(conns) * (IDLE_TIMEOUT + 3 + pause)
    r = subprocess.run(py_module(CLI, "tests.quicbed.endpoints", "client") + [json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"client {sc['name']} failed: {r.stdout} {r.stderr}")
    starts: dict[int, dict[str, Any]] = {}
    labels = []
    for line in r.stdout.splitlines():
        ev = json.loads(line)
        i = ev.pop("i")
        if ev.pop("event") == "start":
            starts[i] = ev
            continue
        c = conns[i]
        labels.append({"scenario": sc["name"], **starts[i], "ip_version": 6 if ":" in src else 4,
                       "treated": treated[i], "sni": c["sni"], "requests": c["requests"],
                       "style": sc["style"] if treated[i] else None, "client": ev})
    return labels


def run_scenario(i: int, sc: dict[str, Any], n: int) -> list[dict[str, Any]]:
    src = client_addr(i, sc["fam"])
    ok, bad = (SRV_OK4, SRV_BAD4) if sc["fam"] == 4 else (SRV_OK6, SRV_BAD6)
    conns, treated = [], []
    for k in range(n + 1):
        t = k < n
        dst = bad if (t and sc["target"] == "ip") else ok
        sni = BLOCKED if (t and sc["target"] == "sni") else ALLOWED
        conns.append(conn_spec(k, dst, sni, sc, t))
        treated.append(t)
    return run_client(sc, src, conns, treated)


def run_tail(count: int) -> list[dict[str, Any]]:
    sc = S("ordinary_tail", 4, "echo", None, None)
    conns = [conn_spec(k, SRV_OK4, ALLOWED, sc, False) for k in range(count)]
    return run_client(sc, TAIL_SRC, conns, [False] * count, pause=1.0)


def finish_labels(labels: list[dict[str, Any]], flows: list[dict[str, Any]]) -> None:
    """Add the middlebox's record of each flow and say what was done (the ``done`` vocabulary of
    docs/quic-bed.md) from the scenario, the client's report and the middlebox's record."""
    kinds = {sc["name"]: sc["kind"] for sc in SCENARIOS}
    by_flow = {tuple(f["flow"]): f for f in flows}
    for x in labels:
        key = (str(ipaddress.ip_address(x["client_ip"])), x["client_port"],
               str(ipaddress.ip_address(x["server_ip"])), x["server_port"])
        mb = by_flow.get(key)
        x["middlebox"] = None if mb is None else {
            k: mb.get(k, 0) for k in ("sni", "triggered", "blocked", "client_forwarded", "client_dropped",
                                      "client_stripped", "server_forwarded", "server_dropped", "odcid")}
        cl = x["client"]
        x["completed"] = bool(cl["handshake_completed"] and cl["responses_ok"] == cl["requests_sent"] >= 1)
        kind = kinds.get(x["scenario"], "echo")
        fwd = (mb or {}).get("client_forwarded", {}) if mb and mb["triggered"] else None
        if x["treated"] and kind == "abort_initial":
            done = "client_close_initial" if cl["close_epoch"] == "initial" else "client_close_handshake"
        elif x["treated"] and kind == "vn":
            done = "vn_restart"
        elif fwd is not None:  # the middlebox blocked this flow: what it let reach the server
            if fwd.get("short"):
                done = "one_rtt_flight"
            elif fwd.get("handshake"):
                done = "handshake_no_1rtt"
            else:
                done = "initials_only"
        elif x["completed"]:
            done = "several_flights" if cl["responses_ok"] > 1 else "one_rtt_flight"
        else:
            done = "failed"  # a connection the bed meant to complete did not: the test fails on it
        x["done"] = done
        x["initials_repeated_to_server"] = bool(x["treated"] and mb and mb["style"]["action"] == "drop_return")


def tcpdump(dev: str, path: Path) -> list[str]:
    return ["ip", "netns", "exec", SRV, "tcpdump", "-i", dev, "-nn", "-s", "0", "-U", "--immediate-mode",
            "-Z", "root", "-w", str(path)]


def run(out: Path, conns: int = 3, tail: int = 12, guard: float = 15.0, workers: int = 9) -> dict[str, Any]:
    """Build the bed, make every scenario's traffic under capture, write the labels. Returns a report."""
    if os.geteuid() != 0:
        raise PermissionError("the QUIC bed needs root (network namespaces, iptables NFQUEUE)")
    miss = missing_tools()
    if miss:
        raise FileNotFoundError("missing: " + ", ".join(miss))
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    for f in ("middlebox.log", "middlebox.flows.json"):
        (out / f).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="quicbed-"))
    os.chmod(tmp, 0o755)
    bed = Bed(tmp, out)
    cap = out / "quicbed.pcap"
    labels: list[dict[str, Any]] = []
    waited = 0.0
    try:
        bed.up()
        waited = wait_for_safe_window(conns * (IDLE_TIMEOUT + 2) + tail + 10, guard)
        td = Background(tcpdump("qs0", cap), ready="listening on", name="tcpdump qs0")
        t_cap = time.time()
        try:
            with ThreadPoolExecutor(workers) as ex:
                for res in ex.map(lambda a: run_scenario(a[0], a[1], conns), enumerate(SCENARIOS)):
                    labels += res
            log(f"scenarios done: {len(labels)} connections; ordinary traffic for {tail} s")
            labels += run_tail(tail)
            time.sleep(1.0)  # the last packets reach tcpdump's file (-U: written as they come)
        finally:
            rc = td.stop(signal.SIGINT)
            drops = [ln for ln in td.lines if "dropped by kernel" in ln and not ln.startswith("0 ")]
            if rc not in (0, None) or drops:
                raise RuntimeError(f"tcpdump: exit {rc} {td.lines}")
        capture_s = time.time() - t_cap
    finally:
        bed.down()  # the middlebox writes its flows file on SIGTERM
        shutil.rmtree(tmp, ignore_errors=True)
    flows_path = out / "middlebox.flows.json"
    flows = json.loads(flows_path.read_text()) if flows_path.exists() else []
    finish_labels(labels, flows)
    with open(out / "labels.jsonl", "w") as fh:
        for x in labels:
            fh.write(json.dumps(x) + "\n")
    rep = {"capture": cap.name, "labels": len(labels), "runtime_s": round(time.time() - t0, 1),
           "capture_s": round(capture_s, 1), "window_wait_s": round(waited, 1),
           "scenarios": [s["name"] for s in SCENARIOS] + ["ordinary_tail"],
           "done": {f"{s}/{d}": n for (s, d), n in sorted(Counter((x["scenario"], x["done"]) for x in labels).items())},
           "failed": [x for x in labels if x["done"] == "failed"]}
    (out / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    return rep
