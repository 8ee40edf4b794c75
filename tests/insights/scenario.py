"""Multi-day labelled inputs for the alert evaluation, made from the real captures in tests/fixtures/.

Each connection of a fixture (made by real tools in network namespaces, docs/fixtures.md) is a
template: its client-to-server frames (the only direction rstscope classifies) with their timing. A
scenario places copies of templates into 15-minute slots over many days, rewriting the client address
(which puts the connection in a network through the test .mmdb files written next to the pcap), the
client port (so that tuples stay unique) and the timestamps. The classifier reads neither checksums
nor anything the rewrite touches beyond those fields, so checksums are left as they were.

``build(dir, days=..., events=True)`` writes ``scenario.pcap``, ``geo/`` (country and ASN mmdbs) and
``topology.yaml`` (alert thresholds for these volumes) and returns the :class:`Scenario` with its
labelled events. The streaming tests feed the same pcap through Kafka.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstscope import config
from rstscope.offline import Analyzer, Options

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SERVER_IP = "10.99.0.2"
T0 = 1740960000  # 2025-03-03 00:00 UTC: day 0
DAY = 86400
UNIT_S = 3600


@dataclass(frozen=True)
class Net:
    country: str
    asn: int
    name: str
    rate: int  # connections per hour at the daily mean
    mix: dict[str, float]  # template pool -> probability


BASE_MIX = {"ok": 0.90, "post_ack_rst": 0.03, "post_psh_rst": 0.02, "later": 0.03, "syn_timeout": 0.02}
NETS = (
    Net("MX", 8151, "Telcel", 30, {"ok": 0.50, "post_ack_rst": 0.45, "post_psh_rst": 0.02, "later": 0.02,
                                   "syn_timeout": 0.01}),  # the blog's zero-rating mobile operator
    Net("MX", 28403, "Kio Networks", 30, BASE_MIX),
    Net("IR", 58224, "TCI", 30, BASE_MIX),
    Net("IR", 197207, "MCI", 30, BASE_MIX),
    Net("BR", 18881, "Vivo", 30, BASE_MIX),
    Net("US", 16509, "Amazon", 30, BASE_MIX),
    Net("US", 7922, "Comcast", 30, BASE_MIX),
    Net("DE", 3320, "Deutsche Telekom", 30, BASE_MIX),
)

# Alert thresholds for these volumes (about 30 connections per ASN and hour): the package defaults
# assume a real deployment's volumes; only min_connections is scaled down.
TEST_ALERTS = {"unit_s": UNIT_S, "baseline_days": 7, "min_baseline_days": 3, "min_connections": 20,
               "min_change_pp": 10.0, "z_threshold": 4.0, "close_after": 2, "recurring_days": 2}
TEST_OUTLIERS = {"min_connections": 200, "confidence": 0.99}


@dataclass(frozen=True)
class Event:
    """A labelled change: ``stage`` moves ``direction`` in ``network`` from ``start`` to ``end``."""

    name: str
    network: tuple[str, str]  # the most specific network the change is in
    networks: frozenset[tuple[str, str]]  # every network whose counts contain it (a true alert may be in any)
    stage: str
    direction: str
    start: int
    end: int  # exclusive; the input's end for changes that persist
    recurring: bool = False  # daily: must come out as recurring


@dataclass
class Scenario:
    dir: Path
    pcap: Path
    geo: Path
    topology: Path
    start: int
    end: int
    days: int
    events: list[Event]
    nets: tuple[Net, ...]
    connections: int = 0
    packets: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Template:
    frames: tuple[tuple[float, bytes], ...]  # (seconds after the first frame, frame)
    ip_off: int  # where the IPv4 header starts in the frame
    tcp_off: int


def read_pcap(path: Path) -> tuple[int, list[tuple[float, bytes]]]:
    """(linktype, [(ts, frame)]) of a classic pcap (usec or nsec, either byte order)."""
    data = path.read_bytes()
    magic = data[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    linktype = struct.unpack(order + "I", data[20:24])[0]
    out, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(order + "IIII", data[pos:pos + 16])
        out.append((sec + frac * scale, data[pos + 16:pos + 16 + incl]))
        pos += 16 + incl
    return linktype, out


def templates(fixture: str, stage: str, tags: frozenset[str] | None = None) -> list[Template]:
    """The connections of a fixture that the real classifier puts in ``stage`` (with exactly ``tags``)."""
    path = FIXTURES / fixture
    records: list[dict[str, Any]] = []
    Analyzer(config.load(), Options(server_ips=[SERVER_IP]), None, records.append).run([path])
    linktype, frames = read_pcap(path)
    assert linktype == 1, "templates come from Ethernet captures"
    out = []
    for r in records:
        if r["stage"] != stage or r["ip_version"] != 4 or (tags is not None and frozenset(r["tags"]) != tags):
            continue
        src, port = ipaddress.IPv4Address(r["client_ip"]).packed, int(r["client_port"])
        chosen = []
        for ts, f in frames:
            if len(f) < 34 or f[12:14] != b"\x08\x00" or f[23] != 6:
                continue
            ihl = (f[14] & 0x0F) * 4
            if f[26:30] == src and struct.unpack(">H", f[14 + ihl:16 + ihl])[0] == port \
                    and r["first_ts"] - 1e-6 <= ts <= r["last_ts"] + 1e-6:
                chosen.append((ts, f))
        if chosen:
            ihl = (chosen[0][1][14] & 0x0F) * 4
            t0 = chosen[0][0]
            out.append(Template(tuple((ts - t0, f) for ts, f in chosen), 14, 14 + ihl))
    assert out, f"no {stage} connection in {fixture}"
    return out


def pools() -> dict[str, list[Template]]:
    return {
        "ok": templates("http_ok.pcap", "no_match", frozenset()),
        "post_ack_rst": templates("abort_post_ack.pcap", "post_ack"),
        "post_psh_rst": templates("abort_post_psh.pcap", "post_psh"),
        "later": templates("abort_later.pcap", "later_in_flow"),
        "syn_timeout": templates("idle_timeouts.pcap", "post_syn", frozenset({"timeout"})),
        "psh_timeout": templates("idle_timeouts.pcap", "post_psh", frozenset({"timeout"})),
        "scan": templates("zmap.pcap", "post_syn"),
    }


def client_net(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"100.{64 + i}.0.0/16")


def networks_of(net: Net) -> frozenset[tuple[str, str]]:
    return frozenset({("world", ""), ("country", net.country), ("asn", str(net.asn)),
                      ("country_asn", f"{net.country}:{net.asn}")})


def write_geo(geo: Path, nets: tuple[Net, ...]) -> None:
    import mmdb_writer
    import netaddr

    geo.mkdir(parents=True, exist_ok=True)
    for fname, dbtype, rec in (
        ("GeoLite2-Country.mmdb", "GeoLite2-Country", lambda n: {"country": {"iso_code": n.country}}),
        ("GeoLite2-ASN.mmdb", "GeoLite2-ASN",
         lambda n: {"autonomous_system_number": n.asn, "autonomous_system_organization": n.name}),
    ):
        w = mmdb_writer.MMDBWriter(ip_version=6, database_type=dbtype, ipv4_compatible=True)
        for i, n in enumerate(nets):
            w.insert_network(netaddr.IPSet([str(client_net(i))]), rec(n))
        w.to_db_file(str(geo / fname))


def write_topology(path: Path) -> None:
    """The packaged topology with the alert and outlier thresholds of these volumes."""
    import yaml

    raw = yaml.safe_load(config.DEFAULT_PATH.read_text())
    raw["alerts"], raw["outliers"] = dict(TEST_ALERTS), dict(TEST_OUTLIERS)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _plan(days: int, with_events: bool) -> tuple[list[Event], dict[str, Any]]:
    """The labelled events and when they happen (day numbers from T0)."""
    if not with_events:
        return [], {}
    by_asn = {n.asn: n for n in NETS}
    end = T0 + days * DAY
    shutdown = (T0 + 8 * DAY + 6 * 3600, T0 + 8 * DAY + 10 * 3600)
    sni = T0 + 9 * DAY + 8 * 3600
    inject = T0 + 10 * DAY + 13 * 3600 + 1800
    scan_day = 7
    ir = frozenset().union(*(networks_of(n) for n in NETS if n.country == "IR"))
    events = [
        Event("shutdown IR", ("country", "IR"), ir, "post_syn", "rise", *shutdown),
        Event("SNI-dropping middlebox AS3320", ("asn", "3320"), networks_of(by_asn[3320]), "post_psh", "rise",
              sni, end),
        Event("reset injection AS18881", ("asn", "18881"), networks_of(by_asn[18881]), "post_psh", "rise",
              inject, end),
        Event("daily scanner AS16509", ("asn", "16509"), networks_of(by_asn[16509]), "post_syn", "rise",
              T0 + scan_day * DAY + 2 * 3600, end, recurring=True),
    ]
    return events, {"shutdown": shutdown, "sni": sni, "inject": inject, "scan_day": scan_day}


def build(dir: Path, *, days: int = 15, events: bool = True, seed: int = 16,
          rate_scale: float = 1.0) -> Scenario:
    """Write the pcap, geo dir and topology of a scenario into ``dir``; return it with its labels."""
    assert not events or days >= 12, "the labelled events need 12 days (7 of baseline first)"
    dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = pools()
    labels, when = _plan(days, events)
    pcap, geo, topo = dir / "scenario.pcap", dir / "geo", dir / "topology.yaml"
    write_geo(geo, NETS)
    write_topology(topo)
    bases = [int(client_net(i).network_address) for i in range(len(NETS))]
    serial = [0] * len(NETS)
    n_conn = n_pkt = 0
    with pcap.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for b in range(T0, T0 + days * DAY, 900):
            hour = (b - T0) % DAY // 3600
            diurnal = 1.0 + 0.3 * (1 if 8 <= hour < 20 else -1)  # busier by day than by night
            conns: list[tuple[float, int, Template]] = []
            for i, net in enumerate(NETS):
                n = max(0, round(net.rate * rate_scale * diurnal / 4) + rng.randint(-1, 1))
                kinds = rng.choices(list(net.mix), weights=list(net.mix.values()), k=n)
                if when:
                    if net.country == "IR" and when["shutdown"][0] <= b < when["shutdown"][1]:
                        kinds = ["syn_timeout"] * n
                    elif net.asn == 3320 and b >= when["sni"]:
                        kinds = ["psh_timeout" if rng.random() < 0.4 else k for k in kinds]
                    elif net.asn == 18881 and b >= when["inject"]:
                        kinds = ["post_psh_rst" if rng.random() < 0.35 else k for k in kinds]
                    elif net.asn == 16509 and (b - T0) // DAY >= when["scan_day"] and 2 <= hour < 20:
                        kinds += ["scan"] * round(net.rate * rate_scale * diurnal / 4)
                for k in kinds:
                    conns.append((b + 5 + rng.random() * 840, i, rng.choice(pool[k])))
            frames: list[tuple[float, bytes]] = []
            for start, i, t in conns:
                k = serial[i]
                serial[i] += 1
                src = (bases[i] + 1 + k % 60000).to_bytes(4, "big")
                port = (10000 + (k // 60000) % 50000).to_bytes(2, "big")
                for dt, f in t.frames:
                    frames.append((start + dt, f[:t.ip_off + 12] + src + f[t.ip_off + 16:t.tcp_off] + port
                                   + f[t.tcp_off + 2:]))
            frames.sort(key=lambda x: x[0])
            for ts, f in frames:
                sec = int(ts)
                out.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(f), len(f)))
                out.write(f)
            n_conn += len(conns)
            n_pkt += len(frames)
    return Scenario(dir, pcap, geo, topo, T0, T0 + days * DAY, days, labels, NETS, n_conn, n_pkt,
                    dict(TEST_ALERTS))
