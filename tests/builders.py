"""Hand-built packets and frames for unit tests: a client's view of one connection at a time."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, PacketRecord

CLIENT = bytes([10, 0, 0, 1])
SERVER = bytes([10, 0, 0, 2])
T0 = 1_700_000_100.0  # inside one 15-minute window (window starts at 1_700_000_100 // 900 * 900)
ISN = 1000
SISN = 5000


def pkt(flags: int, seq: int = ISN + 1, ack: int = SISN + 1, *, ts: float = T0, payload: int = 0,
        ttl: int = 64, ipid: int | None = 100, window: int = 64240, opt_len: int = 0,
        sport: int = 40000, dport: int = 443, src: bytes = CLIENT, dst: bytes = SERVER) -> PacketRecord:
    version = 4 if len(src) == 4 else 6
    if version == 6:
        ipid = None
    return PacketRecord(ts, version, src, dst, sport, dport, flags, seq, ack, ipid, ttl, window, payload, opt_len)


def syn(**kw: object) -> PacketRecord:
    kw.setdefault("seq", ISN)
    kw.setdefault("ack", 0)
    kw.setdefault("opt_len", 20)
    return pkt(TH_SYN, **kw)  # type: ignore[arg-type]


def ack(**kw: object) -> PacketRecord:
    return pkt(TH_ACK, **kw)  # type: ignore[arg-type]


def psh(n: int = 100, seq: int = ISN + 1, **kw: object) -> PacketRecord:
    return pkt(TH_PSH | TH_ACK, seq=seq, payload=n, **kw)  # type: ignore[arg-type]


def rst(ack_no: int = 0, **kw: object) -> PacketRecord:
    return pkt(TH_RST, ack=ack_no, **kw)  # type: ignore[arg-type]


def rstack(**kw: object) -> PacketRecord:
    return pkt(TH_RST | TH_ACK, **kw)  # type: ignore[arg-type]


def fin(**kw: object) -> PacketRecord:
    return pkt(TH_FIN | TH_ACK, **kw)  # type: ignore[arg-type]


def spaced(packets: Iterable[PacketRecord], start: float = T0, step: float = 0.01) -> list[PacketRecord]:
    """The same packets with increasing timestamps."""
    return [p._replace(ts=start + i * step) for i, p in enumerate(packets)]


# -- frames and pcap files -------------------------------------------------------------------------

def ipv4_tcp(p: PacketRecord, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else b"x" * p.payload_len
    opts = b"\x01" * p.opt_len
    tcp = struct.pack(">HHIIBBHHH", p.sport, p.dport, p.seq, p.ack, ((20 + len(opts)) // 4) << 4, p.flags,
                      p.window, 0, 0) + opts
    total = 20 + len(tcp) + len(body)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, p.ipid or 0, 0x4000, p.ttl, 6, 0, p.src, p.dst)
    return ip + tcp + body


def ipv6_tcp(p: PacketRecord, ext: bytes = b"", first_next: int = 6) -> bytes:
    body = b"x" * p.payload_len
    tcp = struct.pack(">HHIIBBHHH", p.sport, p.dport, p.seq, p.ack, 5 << 4, p.flags, p.window, 0, 0)
    plen = len(ext) + len(tcp) + len(body)
    ip = struct.pack(">IHBB16s16s", 6 << 28, plen, first_next if ext else 6, p.ttl, p.src, p.dst)
    return ip + ext + tcp + body


def ether(ip_packet: bytes, ethertype: int = 0x0800, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    out = b"\x02" * 6 + b"\x04" * 6
    for tpid, vid in vlans:
        out += struct.pack(">HH", tpid, vid)
    return out + struct.pack(">H", ethertype) + ip_packet


def pcap_bytes(frames: Iterable[tuple[float, bytes]], linktype: int = 1, nanos: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for ts, data in frames:
        sec = int(ts)
        frac = round((ts - sec) * (1e9 if nanos else 1e6))
        out.append(struct.pack("<IIII", sec, frac, len(data), len(data)) + data)
    return b"".join(out)


def pcapng_bytes(frames: Iterable[tuple[float, bytes]], linktype: int = 1, tsresol: int = 6) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
    idb = block(1, struct.pack("<HHI", linktype, 0, 262144) + opts)
    out = [shb, idb]
    for ts, data in frames:
        t = round(ts * 10 ** tsresol)
        out.append(block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(data), len(data)) + data))
    return b"".join(out)


def wait_off_window_cutoff(duration_s: float, guard_s: float = 25.0, window_s: int = 900) -> float:
    """Sleep until [now, now + duration_s] is at least guard_s from any 15-minute window boundary.

    Captures made in real time near a boundary get connections split across windows, and those that
    had not ended then ``incomplete`` (last packet within timeout_s of the window's end): a test that
    counts outcomes would see other counts. Returns the seconds slept."""
    import time

    slept = 0.0
    while True:
        pos = time.time() % window_s
        if pos >= guard_s and pos + duration_s + guard_s <= window_s:
            return slept
        wait = (window_s - pos) + guard_s if pos >= guard_s else guard_s - pos
        time.sleep(wait + 0.5)
        slept += wait + 0.5
