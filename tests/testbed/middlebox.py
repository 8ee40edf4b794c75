#!/usr/bin/env python3
"""The test bed's tampering middlebox: runs in the ROUTER namespace, NFQUEUE + AF_PACKET injection.

    ip netns exec rstb-rtr python3 tests/testbed/middlebox.py CONFIG.json

The router's iptables FORWARD chain queues every forwarded TCP packet to/from ports 80 and 443
(queue 0). This process gives each a verdict (accept / drop) and, when a connection is to be
tampered with, injects forged packets TOWARD THE SERVER through an AF_PACKET socket on the
router's server-side interface (so the kernel touches neither TTL nor IP ID, and the injected
packets never re-enter the queue). Only the Python standard library and the PyPI package
``NetfilterQueue`` (needs the Debian package libnetfilter-queue-dev to build) are used.

What it does to a connection depends on the CLIENT SOURCE ADDRESS (each client address stands for
a network behind a differently-behaving censor); the config maps address -> style. A style has
 * a trigger: ``ip`` (the server address is on the blocklist: acts on the SYN / SYN-ACK),
   ``content`` (HTTP ``Host:`` or TLS SNI equal to a blocked name: acts on that data segment);
 * an action: ``drop`` (drop the trigger packet and everything after it), ``pass_drop`` (forward
   the trigger packet, drop everything after), ``inject`` (forward or drop the trigger packet,
   then inject the listed RST / RST+ACK packets);
 * the injected packets' TTL and IP ID: ``unlike`` (TTL 40, IP ID far from the client's),
   ``ttl`` (TTL 40, IP ID = client's + 1), ``ipid`` (client's TTL, far IP ID), ``mimic`` (client's
   TTL, IP ID = client's + 1: the evidence cannot see this injection).
After a trigger the connection is BLOCKED: every later packet of it, in both directions, is dropped
(residual blocking, as the GFW does), so the client's retransmissions, ACKs, FIN or RST never reach
the server and the server sees exactly what the middlebox chose.

Config (JSON): {"queue": 0, "iface": "r1", "src_mac": "..", "dst_mac": "..",
  "blocked_names": ["blocked.example"], "blocked_ips": ["10.77.2.3", "fd77:2::3"],
  "styles": {"10.77.1.12": {"trigger": "content", "action": "inject", "forward": true,
                            "inject": [["R", "ack"], ["R", "zero"]], "evidence": "unlike"}, ...}}
inject items: [flags, ack] with flags "R" (RST) or "RA" (RST+ACK) and ack one of "ack" (the
trigger packet's ack number), "zero", "plus" (ack + 1460 * index), "srv" (server ISN + 1, from the
SYN-ACK the middlebox saw); optionally [flags, ack, seq offset, window] (window an int or "rand":
a random non-zero window). Style key "seq_base": "start" puts the injected sequence numbers at the
START of the trigger segment (Clayton et al. 2006: the GFW's X, X+1460, X+4380) instead of after it.
Evidence style "gfw" (the GFW's injectors, docs/signatures.md): an RST without ACK gets a random TTL
(30-50), the i-th injected packet otherwise TTL 40 + i (cyclically increasing, Wang et al. 2017);
IP IDs as "unlike".
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import re
import signal
import socket
import struct
import sys

from netfilterqueue import NetfilterQueue

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
HOST_RE = re.compile(rb"(?im)^host:[ \t]*([^\r\n: \t]+)")
FAR_IPID = 20000  # IP ID offset of injected packets in the "unlike"/"ipid" evidence styles
INJECT_TTL = 40   # TTL / hop limit of injected packets in the "unlike"/"ttl" evidence styles


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def parse(pkt: bytes) -> dict | None:
    """IPv4/IPv6 + TCP header fields of a queued packet (no IPv6 extension headers expected)."""
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 15) * 4
        if pkt[9] != 6:
            return None
        d = {"v": 4, "ttl": pkt[8], "ipid": struct.unpack("!H", pkt[4:6])[0],
             "src": socket.inet_ntop(socket.AF_INET, pkt[12:16]), "dst": socket.inet_ntop(socket.AF_INET, pkt[16:20])}
        total = struct.unpack("!H", pkt[2:4])[0]
        t = pkt[ihl:total]
    elif v == 6:
        if pkt[6] != 6:
            return None
        d = {"v": 6, "ttl": pkt[7], "ipid": None,
             "src": socket.inet_ntop(socket.AF_INET6, pkt[8:24]), "dst": socket.inet_ntop(socket.AF_INET6, pkt[24:40])}
        t = pkt[40:40 + struct.unpack("!H", pkt[4:6])[0]]
    else:
        return None
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", t[:14])
    d.update(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, payload=t[(off >> 4) * 4:])
    return d


def sni(payload: bytes) -> str | None:
    """server_name of a TLS ClientHello in one segment, else None."""
    try:
        if payload[0] != 0x16 or payload[5] != 0x01:
            return None
        o = 5 + 4 + 2 + 32
        o += 1 + payload[o]                                          # session id
        o += 2 + struct.unpack("!H", payload[o:o + 2])[0]            # cipher suites
        o += 1 + payload[o]                                          # compression methods
        end = o + 2 + struct.unpack("!H", payload[o:o + 2])[0]
        o += 2
        while o + 4 <= end:
            et, el = struct.unpack("!HH", payload[o:o + 4])
            if et == 0:
                n = struct.unpack("!H", payload[o + 7:o + 9])[0]
                return payload[o + 9:o + 9 + n].decode("ascii", "replace").lower()
            o += 4 + el
    except (IndexError, struct.error):
        return None
    return None


def build(v: int, src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
          ttl: int, ipid: int, window: int = 0) -> bytes:
    """An IP + TCP packet (no options, no payload; window 0 unless given) with correct checksums."""
    fam = socket.AF_INET if v == 4 else socket.AF_INET6
    s, d = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0)
    pseudo = s + d + (struct.pack("!BBH", 0, 6, len(tcp)) if v == 4 else struct.pack("!IxxxB", len(tcp), 6))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    if v == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ipid & 0xFFFF, 0x4000, ttl, 6, 0, s, d)
        ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, ttl, s, d)
    return ip + tcp


class Middlebox:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.styles = {str(ipaddress.ip_address(k)): v for k, v in cfg["styles"].items()}
        self.names = {n.lower() for n in cfg["blocked_names"]}
        self.bad_ips = {str(ipaddress.ip_address(a)) for a in cfg["blocked_ips"]}
        self.flows: dict[tuple, dict] = {}   # (client ip, client port, server ip, server port) -> state
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.tx.bind((cfg["iface"], 0))
        macs = bytes.fromhex(cfg["dst_mac"].replace(":", "")) + bytes.fromhex(cfg["src_mac"].replace(":", ""))
        self.eth = {4: macs + b"\x08\x00", 6: macs + b"\x86\xdd"}
        self.log = open(cfg["log"], "a", buffering=1) if cfg.get("log") else None  # noqa: SIM115 (process-long)

    def note(self, msg: str) -> None:
        if self.log:
            self.log.write(msg + "\n")

    def inject(self, st: dict, f: dict, style: dict, seq: int, base_ack: int) -> None:
        ev = style.get("evidence", "unlike")
        for i, (fl, ackmode, *extra) in enumerate(style["inject"]):
            ack = {"ack": base_ack, "zero": 0, "plus": base_ack + 1460 * i, "srv": st.get("srv_isn", 0) + 1}[ackmode]
            off, win = (extra + [0, 0])[:2]
            win = random.randint(1, 0xFFFF) if win == "rand" else int(win)
            if ev == "gfw":
                ttl = random.randint(30, 50) if fl == "R" else INJECT_TTL + i
            else:
                ttl = INJECT_TTL if ev in ("unlike", "ttl") else st["ttl"]
            ipid = 0  # IPv6: no IP ID
            if f["v"] == 4:
                ipid = (st["ipid"] + FAR_IPID + 7 * i) if ev in ("unlike", "ipid", "gfw") else st["ipid"] + 1
            flags = RST | (ACK if fl == "RA" else 0)
            pkt = build(f["v"], st["cip"], st["sip"], st["cport"], st["sport"], seq + off, ack, flags, ttl, ipid, win)
            self.tx.send(self.eth[f["v"]] + pkt)
            self.note(f"inject {st['cip']}:{st['cport']} -> {st['sip']}:{st['sport']} {fl} "
                      f"seq={(seq + off) & 0xFFFFFFFF} ack={ack} ttl={ttl} ipid={ipid & 0xFFFF} win={win}")

    def __call__(self, qpkt) -> None:
        try:
            self.decide(qpkt)
        except Exception as e:  # never leave a packet without a verdict; the labels will show the damage
            self.note(f"error {e!r}")
            with contextlib.suppress(Exception):
                qpkt.accept()

    def decide(self, qpkt) -> None:
        f = parse(qpkt.get_payload())
        if f is None:
            qpkt.accept()
            return
        to_server = f["dport"] in (80, 443)
        c, s = (("src", "sport"), ("dst", "dport")) if to_server else (("dst", "dport"), ("src", "sport"))
        key = (f[c[0]], f[c[1]], f[s[0]], f[s[1]])
        style = self.styles.get(key[0])
        if style is None:
            qpkt.accept()
            return
        st = self.flows.get(key)
        if f["flags"] & SYN and not f["flags"] & ACK and to_server:
            if st is not None and st.get("blocked"):
                qpkt.drop()   # a retransmitted SYN of a blocked connection
                return
            st = self.flows[key] = {"cip": key[0], "cport": key[1], "sip": key[2], "sport": key[3], "blocked": False}
        if st is None:
            qpkt.accept()
            return
        if st["blocked"]:
            qpkt.drop()
            return
        if to_server:  # remembered as "the last client packet forwarded" if it is accepted below
            prev = (st.get("ttl"), st.get("ipid"))
            st["ttl"], st["ipid"] = f["ttl"], f["ipid"]  # TTL already decremented by the forwarding
        trig, action = style["trigger"], style["action"]
        if not to_server:
            if f["flags"] & SYN and f["flags"] & ACK:
                st["srv_isn"] = f["seq"]
                if trig == "ip" and key[2] in self.bad_ips and action == "inject":
                    # mid-handshake injection: the server's SYN-ACK is eaten, RSTs go to the server
                    st["blocked"] = True
                    qpkt.drop()
                    self.inject(st, f, style, st["syn_seq"] + 1, f["seq"] + 1)
                    return
            qpkt.accept()
            return
        if f["flags"] & SYN:
            st["syn_seq"] = f["seq"]
            qpkt.accept()
            if trig == "ip" and key[2] in self.bad_ips and action == "pass_drop":
                st["blocked"] = True   # a shutdown: the SYN got through, nothing after it will
                self.note(f"block-after-syn {key}")
            return
        if trig != "content" or not f["payload"]:
            qpkt.accept()
            return
        host = None
        m = HOST_RE.search(f["payload"])
        if m:
            host = m.group(1).decode("ascii", "replace").lower()
        elif f["dport"] == 443:
            host = sni(f["payload"])
        if host not in self.names:
            qpkt.accept()
            return
        st["blocked"] = True
        self.note(f"trigger {key} host={host} style={style}")
        if action == "drop":
            qpkt.drop()
        elif action == "inject" and not style.get("forward", True):
            qpkt.drop()
            st["ttl"], st["ipid"] = prev  # the server never saw the trigger packet
            self.inject(st, f, style, f["seq"], f["ack"])
        elif action == "pass_drop":
            qpkt.accept()
        elif action == "inject":
            qpkt.accept()
            start = style.get("seq_base") == "start"  # the GFW's X: the start of the trigger segment
            self.inject(st, f, style, f["seq"] + (0 if start else len(f["payload"])), f["ack"])


def main() -> None:
    with open(sys.argv[1]) as fh:
        cfg = json.load(fh)
    mb = Middlebox(cfg)
    nfq = NetfilterQueue()
    nfq.bind(cfg.get("queue", 0), mb)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        nfq.run()
    finally:
        nfq.unbind()


if __name__ == "__main__":
    main()
