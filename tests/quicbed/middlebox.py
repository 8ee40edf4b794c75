"""The QUIC bed's censoring middlebox: runs in the ROUTER namespace on NFQUEUE, drops only (no injection).

    ip netns exec qb-rtr python -m tests.quicbed.middlebox CONFIG.json

The router's FORWARD chain queues every forwarded UDP packet to / from port 443. Like a censor, the
middlebox decrypts client Initial packets on its own (RFC 9001 section 5.2: the Initial keys derive
from the Destination Connection ID of the client's first Initial; aioquic's ``CryptoPair`` does the
HKDF, AEAD and header protection, the frames are parsed here), reassembles the CRYPTO frames across
Initial packets, reads the ClientHello's server_name (with the TCP bed's ``sni`` parser) and acts per
CLIENT SOURCE ADDRESS (config: address -> style). It never depends on rstscope's QUIC decoder.

A style: ``trigger`` ``sni`` (SNI equal to a blocked name) or ``ip`` (server address on the
blocklist: the first client Initial triggers), and ``action``:
 * ``pass_drop``: the triggering datagram is forwarded, every later packet of the flow, both
   directions, is dropped (the GFW's residual QUIC blocking: the server sees one client Initial);
 * ``drop``: the triggering datagram and everything after it is dropped (in-path: the server sees
   nothing of the flow);
 * ``drop_return``: client packets pass, every server packet after the trigger is dropped (the
   server sees the client's Initial retransmissions);
 * ``after_handshake``: the flow passes until the client's first datagram that starts with a short
   header (1-RTT); that datagram and everything after it, both directions, is dropped. aioquic's
   client coalesces a 1-RTT packet behind its Handshake (Finished) packet: with ``strip_coalesced``
   the middlebox overwrites that 1-RTT packet with zero bytes (datagram padding: the server reads the
   packets before it and stops there), so the server sees the whole handshake and no 1-RTT packet;
   without it the server sees that one coalesced 1-RTT packet and nothing after.
A flow is (client address, client port, server address, server port). Per flow it counts the client
packets forwarded by type; at SIGTERM it writes every flow to ``flows`` (JSON) so the bed's labels
can say what the middlebox did (never read from the capture).

Config (JSON): {"queue": 78, "blocked_names": ["blocked.example"], "blocked_ips": ["10.78.2.3"],
  "log": "middlebox.log", "flows": "middlebox.flows.json",
  "styles": {"10.78.1.11": {"trigger": "sni", "action": "pass_drop"}, ...}}
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import signal
import socket
import struct
import sys
from typing import Any

from aioquic.quic.crypto import CryptoError, CryptoPair
from netfilterqueue import NetfilterQueue

from tests.testbed.middlebox import csum
from tests.testbed.middlebox import sni as tls_record_sni

QUIC_V1, QUIC_V2 = 0x00000001, 0x6B3343CF
LONG_TYPES_V1 = {0: "initial", 1: "0rtt", 2: "handshake", 3: "retry"}
LONG_TYPES_V2 = {1: "initial", 2: "0rtt", 3: "handshake", 0: "retry"}


def varint(b: bytes, o: int) -> tuple[int, int]:
    """A QUIC variable-length integer at offset o: (value, next offset)."""
    n = 1 << (b[o] >> 6)
    v = b[o] & 0x3F
    for k in range(1, n):
        v = (v << 8) | b[o + k]
    return v, o + n


def parse_udp(pkt: bytes) -> dict[str, Any] | None:
    """IPv4 / IPv6 + UDP of a queued packet (no IPv6 extension headers expected)."""
    v = pkt[0] >> 4
    if v == 4:
        if pkt[9] != 17:
            return None
        ihl = (pkt[0] & 15) * 4
        src, dst = socket.inet_ntop(socket.AF_INET, pkt[12:16]), socket.inet_ntop(socket.AF_INET, pkt[16:20])
        u = pkt[ihl:struct.unpack("!H", pkt[2:4])[0]]
        off = ihl
    elif v == 6:
        if pkt[6] != 17:
            return None
        src, dst = socket.inet_ntop(socket.AF_INET6, pkt[8:24]), socket.inet_ntop(socket.AF_INET6, pkt[24:40])
        u = pkt[40:40 + struct.unpack("!H", pkt[4:6])[0]]
        off = 40
    else:
        return None
    sport, dport, ulen = struct.unpack("!HHH", u[:6])
    return {"v": v, "src": src, "dst": dst, "sport": sport, "dport": dport, "payload": u[8:ulen], "udp_off": off}


def with_payload(pkt: bytes, f: dict[str, Any], payload: bytes) -> bytes:
    """The queued packet with a new UDP payload of the SAME length, its UDP checksum recomputed."""
    o = f["udp_off"]
    udp = bytearray(pkt[o:o + 8] + payload)
    udp[6:8] = b"\0\0"
    if f["v"] == 4:
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    else:
        pseudo = pkt[8:40] + struct.pack("!IxxxB", len(udp), 17)
    c = csum(pseudo + bytes(udp)) or 0xFFFF
    udp[6:8] = struct.pack("!H", c)
    return pkt[:o] + bytes(udp) + pkt[o + len(udp):]


def split_datagram(d: bytes) -> list[dict[str, Any]]:
    """The QUIC packets coalesced in one UDP datagram (RFC 9000 section 12.2): long-header packets
    carry a Length field; a short-header packet runs to the end of the datagram."""
    out: list[dict[str, Any]] = []
    o = 0
    while o < len(d):
        first = d[o]
        if not first & 0x80:
            if first & 0x40:  # the fixed bit: a short-header packet; else the datagram's padding (zeros)
                out.append({"form": "short", "start": o, "end": len(d)})
            break
        version = struct.unpack("!I", d[o + 1:o + 5])[0]
        p = o + 5
        dcid = d[p + 1:p + 1 + d[p]]
        p += 1 + d[p]
        scid = d[p + 1:p + 1 + d[p]]
        p += 1 + d[p]
        if version == 0:
            out.append({"form": "long", "type": "version_negotiation", "version": 0, "start": o, "end": len(d),
                        "dcid": dcid, "scid": scid})
            break
        types = LONG_TYPES_V2 if version == QUIC_V2 else LONG_TYPES_V1
        ptype = types[(first >> 4) & 3] if version in (QUIC_V1, QUIC_V2) else "unknown_version"
        if ptype == "retry" or ptype == "unknown_version":
            out.append({"form": "long", "type": ptype, "version": version, "start": o, "end": len(d),
                        "dcid": dcid, "scid": scid})
            break
        if ptype == "initial":
            tlen, p = varint(d, p)
            p += tlen
        length, p = varint(d, p)
        out.append({"form": "long", "type": ptype, "version": version, "start": o, "pn_offset": p,
                    "end": p + length, "dcid": dcid, "scid": scid})
        o = p + length
    return out


def crypto_frames(payload: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of the CRYPTO frames of a decrypted Initial payload. Frames allowed in an
    Initial (RFC 9000 section 12.4): PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE (0x1c)."""
    out: list[tuple[int, bytes]] = []
    o = 0
    while o < len(payload):
        ft, o = varint(payload, o)
        if ft == 0x00 or ft == 0x01:
            continue
        if ft in (0x02, 0x03):
            _, o = varint(payload, o)            # largest acknowledged
            _, o = varint(payload, o)            # ack delay
            n, o = varint(payload, o)            # range count
            _, o = varint(payload, o)            # first range
            for _ in range(2 * n):
                _, o = varint(payload, o)
            if ft == 0x03:
                for _ in range(3):
                    _, o = varint(payload, o)
        elif ft == 0x06:
            off, o = varint(payload, o)
            ln, o = varint(payload, o)
            out.append((off, payload[o:o + ln]))
            o += ln
        elif ft == 0x1C:
            _, o = varint(payload, o)
            _, o = varint(payload, o)
            ln, o = varint(payload, o)
            o += ln
        else:
            break  # not an Initial frame: stop reading
    return out


def client_hello_sni(stream: bytes) -> str | None:
    """server_name of a complete ClientHello handshake message (the CRYPTO stream from offset 0)."""
    if len(stream) < 4 or stream[0] != 0x01:
        return None
    n = int.from_bytes(stream[1:4], "big")
    if len(stream) < 4 + n:
        return None
    msg = stream[:4 + n]
    record = b"\x16\x03\x01" + struct.pack("!H", len(msg)) + msg  # as one TLS record: the TCP bed's parser
    return tls_record_sni(record) or ""


class InitialReader:
    """Decrypts one flow's client Initials and reassembles their CRYPTO stream."""

    def __init__(self) -> None:
        self.odcid: bytes | None = None
        self.version: int | None = None
        self.crypto: CryptoPair | None = None
        self.chunks: dict[int, bytes] = {}
        self.next_pn = 0
        self.sni: str | None = None
        self.decrypted = 0

    def feed(self, d: bytes, pkt: dict[str, Any]) -> None:
        if self.odcid is None:
            self.odcid = pkt["dcid"]   # the DCID of the client's FIRST Initial keys every Initial of the flow
        if self.crypto is None or self.version != pkt["version"]:
            self.version = pkt["version"]
            self.crypto = CryptoPair()
            # is_client=False: the "recv" side of the pair holds the client's keys ("client in")
            self.crypto.setup_initial(self.odcid, is_client=False, version=self.version)
        data = d[pkt["start"]:pkt["end"]]
        try:
            _, payload, pn = self.crypto.decrypt_packet(data, pkt["pn_offset"] - pkt["start"], self.next_pn)
        except CryptoError:
            return
        self.decrypted += 1
        self.next_pn = max(self.next_pn, pn + 1)
        for off, chunk in crypto_frames(payload):
            self.chunks[off] = chunk
        stream = b""
        while len(stream) in self.chunks:
            stream += self.chunks[len(stream)]
        if self.sni is None:
            self.sni = client_hello_sni(stream)


class Middlebox:
    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.styles = {str(ipaddress.ip_address(k)): v for k, v in cfg["styles"].items()}
        self.names = {n.lower() for n in cfg["blocked_names"]}
        self.bad_ips = {str(ipaddress.ip_address(a)) for a in cfg["blocked_ips"]}
        self.flows: dict[tuple[str, int, str, int], dict[str, Any]] = {}
        self.readers: dict[tuple[str, int, str, int], InitialReader] = {}
        self.log = open(cfg["log"], "a", buffering=1) if cfg.get("log") else None  # noqa: SIM115 (process-long)

    def note(self, msg: str) -> None:
        if self.log:
            self.log.write(msg + "\n")

    def __call__(self, qpkt: Any) -> None:
        try:
            self.decide(qpkt)
        except Exception as e:  # never leave a packet without a verdict; the labels will show the damage
            self.note(f"error {e!r}")
            with contextlib.suppress(Exception):
                qpkt.accept()

    def decide(self, qpkt: Any) -> None:
        f = parse_udp(qpkt.get_payload())
        if f is None:
            qpkt.accept()
            return
        to_server = f["dport"] == 443
        if to_server:
            key = (str(ipaddress.ip_address(f["src"])), f["sport"], str(ipaddress.ip_address(f["dst"])), f["dport"])
        else:
            key = (str(ipaddress.ip_address(f["dst"])), f["dport"], str(ipaddress.ip_address(f["src"])), f["sport"])
        style = self.styles.get(key[0])
        if style is None:
            qpkt.accept()
            return
        st = self.flows.get(key)
        if st is None:
            if not to_server:
                qpkt.accept()
                return
            st = self.flows[key] = {"flow": list(key), "style": style, "sni": None, "triggered": False,
                                    "blocked": False, "client_forwarded": {}, "client_dropped": 0,
                                    "server_forwarded": 0, "server_dropped": 0, "odcid": None}
        if not to_server:
            if st["blocked"] or (st["triggered"] and style["action"] == "drop_return"):
                st["server_dropped"] += 1
                qpkt.drop()
            else:
                st["server_forwarded"] += 1
                qpkt.accept()
            return
        if st["blocked"]:
            st["client_dropped"] += 1
            qpkt.drop()
            return
        d = f["payload"]
        pkts = split_datagram(d)
        types = [p.get("type", "short") if p["form"] == "long" else "short" for p in pkts]
        rd = self.readers.setdefault(key, InitialReader())
        if not st["triggered"]:
            for p in pkts:
                if p.get("type") == "initial":
                    rd.feed(d, p)
            st["sni"], st["odcid"] = rd.sni, rd.odcid.hex() if rd.odcid else None
            by_sni = style["trigger"] == "sni" and rd.sni is not None and rd.sni.lower() in self.names
            by_ip = style["trigger"] == "ip" and key[2] in self.bad_ips and "initial" in types
            st["triggered"] = by_sni or by_ip
            if st["triggered"]:
                self.note(f"trigger {key} sni={rd.sni} style={style}")
        action = style["action"]
        forward = True
        if (st["triggered"] and action == "after_handshake" and style.get("strip_coalesced") and types
                and types[0] != "short" and "short" in types):
            short = next(p for p in pkts if p["form"] == "short")
            stripped = d[:short["start"]] + bytes(short["end"] - short["start"])
            qpkt.set_payload(with_payload(qpkt.get_payload(), f, stripped))
            st["client_stripped"] = st.get("client_stripped", 0) + 1
            types = [t for t in types if t != "short"]
            self.note(f"stripped a coalesced 1-RTT packet {key}")
        if st["triggered"]:
            if action == "drop" or (action == "after_handshake" and types and types[0] == "short"):
                forward = False
            if action in ("drop", "pass_drop") or (action == "after_handshake" and not forward):
                st["blocked"] = True
        if forward:
            for t in types:
                st["client_forwarded"][t] = st["client_forwarded"].get(t, 0) + 1
            qpkt.accept()
        else:
            st["client_dropped"] += 1
            qpkt.drop()

    def dump(self) -> None:
        if self.cfg.get("flows"):
            with open(self.cfg["flows"], "w") as fh:
                json.dump(list(self.flows.values()), fh, indent=1)


def main() -> None:
    with open(sys.argv[1]) as fh:
        cfg = json.load(fh)
    mb = Middlebox(cfg)
    nfq = NetfilterQueue()
    nfq.bind(int(cfg.get("queue", 78)), mb)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        nfq.run()
    finally:
        nfq.unbind()
        mb.dump()


if __name__ == "__main__":
    main()
