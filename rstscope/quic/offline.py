"""Capture files -> QUIC records, offline (docs/quic.md).

Only client-to-server datagrams are used: UDP to one of the server addresses (addresses or CIDRs) and
ports. Every frame is accounted for: ``frames`` = ``datagrams_used`` + the ``dropped.<reason>`` counters
(link/IP/UDP decoding, ``server_to_client``, ``not_to_server``, ``quic_<reason>``, ``no_initial``,
``after_close``, ``beyond_max_packets``, ``late``); attempts excluded as ``incomplete`` are counted too.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from rstscope.capture.files import FileStats, read_frames
from rstscope.config import Topology, WindowParams
from rstscope.quic.classify import classify_attempt
from rstscope.quic.record import SNI_POLICIES, QuicRecord, build_quic_record
from rstscope.quic.table import AFTER_CLOSE, BEYOND_MAX, LATE, NO_INITIAL, QuicFinished, QuicTable
from rstscope.quic.udp import decode_udp

_TABLE_DROPS = (NO_INITIAL, AFTER_CLOSE, BEYOND_MAX, LATE)
IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class ServerSide:
    """Which UDP endpoints are servers: addresses or CIDRs, and ports."""

    def __init__(self, server_ips: Iterable[str], server_ports: Iterable[int]) -> None:
        self.nets: list[IpNet] = [ipaddress.ip_network(s, strict=False) for s in server_ips]
        if not self.nets:
            raise ValueError("QUIC classification needs the server addresses (server_ips)")
        self.ports = frozenset(server_ports)
        self._cache: dict[bytes, bool] = {}

    def is_server(self, ip: bytes, port: int) -> bool:
        if port not in self.ports:
            return False
        hit = self._cache.get(ip)
        if hit is None:
            addr = ipaddress.ip_address(ip)
            hit = self._cache[ip] = any(addr in n for n in self.nets)
        return hit


def run_files(paths: Sequence[Path | str], server_ips: Iterable[str], server_ports: Iterable[int] = (443,),
              topology: Topology | None = None) -> tuple[list[QuicFinished], Counter[str]]:
    """Every attempt of the captures (in the order given, one time line), finished, with the counters.
    The end of the input is the last frame of any kind (as for TCP)."""
    params = topology.window if topology is not None else WindowParams()
    side = ServerSide(server_ips, server_ports)
    table = QuicTable(params)
    counters: Counter[str] = Counter()
    out: list[QuicFinished] = []
    last = float("-inf")
    for path in paths:
        stats = FileStats(str(path))
        for f in read_frames(path, stats):
            counters["frames"] += 1
            last = max(last, f.ts)
            dg = decode_udp(f.ts, f.linktype, f.data)
            if isinstance(dg, str):
                counters["dropped." + dg] += 1
                continue
            if not side.is_server(dg.dst, dg.dport):
                reason = "server_to_client" if side.is_server(dg.src, dg.sport) else "not_to_server"
                counters["dropped." + reason] += 1
                continue
            before = table.counters.copy()
            out.extend(table.add_datagram(dg))
            if table.last is not None:
                counters["datagrams_used"] += 1
            else:
                diff = table.counters - before
                reason = next((r for r in (*_TABLE_DROPS, *sorted(diff)) if diff[r]), "unknown")
                counters["dropped." + reason] += 1
        for reason, n in stats.errors.items():
            counters["file_error." + reason] += n
    if last != float("-inf"):
        out.extend(table.close(last))
    for k, n in table.counters.items():
        if k.startswith("quic_") or k in _TABLE_DROPS:
            continue  # per datagram: counted above as dropped.<reason>
        counters[k] += n
    return out, counters


def records_of(finished: Iterable[QuicFinished], sni_policy: str = "hash") -> list[QuicRecord]:
    """The records of the attempts that were not excluded, in the order they finished."""
    recs = []
    for fin in finished:
        if fin.excluded:
            continue
        a = fin.attempt
        v = classify_attempt(fin)
        recs.append(build_quic_record(a.key, a.window_start, a.version, a.odcid, a.first_ts, a.last_ts,
                                      a.datagrams, v, fin.end, a.sni, a.alpn, sni_policy))
    return recs


def classify_files(paths: Sequence[Path | str], server_ips: Iterable[str], server_ports: Iterable[int] = (443,),
                   topology: Topology | None = None, sni_policy: str = "hash") -> tuple[list[QuicRecord], Counter[str]]:
    """QUIC records of capture files (pcap/pcapng, maybe compressed) and the counters of what was not used."""
    if sni_policy not in SNI_POLICIES:
        raise ValueError(f"sni_policy must be one of {', '.join(SNI_POLICIES)}")
    finished, counters = run_files(paths, server_ips, server_ports, topology)
    records = records_of(finished, sni_policy)
    counters["connections"] = len(records)
    return records, counters
