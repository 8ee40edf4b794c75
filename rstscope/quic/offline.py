"""Capture files -> QUIC records, offline (docs/quic.md): the reader (``quic.reader``, what an edge runs)
and the attempt table (``quic.table``, what a worker runs), composed, so offline and streaming cannot drift.

Only client-to-server datagrams are used: UDP to one of the server addresses (addresses or CIDRs) and
ports. Every frame is accounted for: ``frames`` = ``datagrams_used`` + the ``dropped.<reason>`` counters
(link/IP/UDP decoding, ``server_to_client``, ``not_to_server``, ``quic_<reason>``, ``no_initial``,
``after_close``, ``beyond_max_packets``, ``late``); attempts excluded as ``incomplete`` are counted too.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rstscope.capture.files import FileStats, read_frames
from rstscope.config import Topology, WindowParams
from rstscope.quic.reader import QuicReader
from rstscope.quic.record import SNI_POLICIES, QuicRecord, record_of
from rstscope.quic.table import AFTER_CLOSE, BEYOND_MAX, LATE, NO_INITIAL, QuicFinished, QuicTable
from rstscope.quic.udp import decode_udp

_TABLE_DROPS = (NO_INITIAL, AFTER_CLOSE, BEYOND_MAX, LATE)
IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


class ServerSide:
    """Which UDP endpoints are servers: addresses or CIDRs, and ports."""

    def __init__(self, server_ips: Iterable[str], server_ports: Iterable[int], require_ips: bool = True) -> None:
        self.nets: list[IpNet] = [ipaddress.ip_network(s, strict=False) for s in server_ips]
        if not self.nets and require_ips:
            raise ValueError("QUIC classification needs the server addresses (server_ips)")
        self.ports = frozenset(server_ports)
        self._cache: dict[bytes, bool] = {}

    def is_server(self, ip: bytes, port: int) -> bool:
        if port not in self.ports:
            return False
        if not self.nets:
            return True  # no addresses given (an edge): the port alone says
        hit = self._cache.get(ip)
        if hit is None:
            if len(self._cache) > 65536:
                self._cache.clear()
            addr = ipaddress.ip_address(ip)
            hit = self._cache[ip] = any(addr in n for n in self.nets)
        return hit


def run_files(paths: Sequence[Path | str], server_ips: Iterable[str], server_ports: Iterable[int] = (443,),
              topology: Topology | None = None, sni_policy: str = "hash") -> tuple[list[QuicFinished], Counter[str]]:
    """Every attempt of the captures (in the order given, one time line), finished, with the counters.
    The end of the input is the last frame of any kind (as for TCP)."""
    params = topology.window if topology is not None else WindowParams()
    side = ServerSide(server_ips, server_ports)
    reader = QuicReader(params, sni_policy)
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
            got = reader.read(dg)
            if isinstance(got, str):  # what the edge would not send
                out.extend(table.advance(dg.ts))
                counters["dropped." + got] += 1
                continue
            before = table.counters.copy()
            out.extend(table.add(got.recs, got.hello))
            if table.last is not None:
                counters["datagrams_used"] += 1
            else:  # the table runs the reader's rule on the same datagrams: it drops nothing the reader passed
                diff = table.counters - before
                reason = next((r for r in (*_TABLE_DROPS, *sorted(diff)) if diff[r]), "unknown")
                counters["dropped." + reason] += 1
        for reason, n in stats.errors.items():
            counters["file_error." + reason] += n
    if last != float("-inf"):
        out.extend(table.close(last))
    for k, n in (table.counters + reader.counters).items():
        if k in _TABLE_DROPS:
            continue  # per datagram: counted above as dropped.<reason>
        counters[k] += n
    return out, counters


Locate = Callable[[bytes], tuple[str, int, str]]  # client address -> (country, asn, as_name)


def records_of(finished: Iterable[QuicFinished], locate: Locate | None = None) -> list[QuicRecord]:
    """The records of the attempts that were not excluded, in the order they finished; ``locate``
    geolocates the client (e.g. ``GeoDB.lookup``; without it: XX, AS0, as the worker without --geo)."""
    if locate is None:
        return [record_of(fin) for fin in finished if not fin.excluded]
    return [record_of(fin, *locate(fin.attempt.key[0])) for fin in finished if not fin.excluded]


def classify_files(paths: Sequence[Path | str], server_ips: Iterable[str], server_ports: Iterable[int] = (443,),
                   topology: Topology | None = None, sni_policy: str = "hash",
                   locate: Locate | None = None) -> tuple[list[QuicRecord], Counter[str]]:
    """QUIC records of capture files (pcap/pcapng, maybe compressed) and the counters of what was not used."""
    if sni_policy not in SNI_POLICIES:
        raise ValueError(f"sni_policy must be one of {', '.join(SNI_POLICIES)}")
    finished, counters = run_files(paths, server_ips, server_ports, topology, sni_policy)
    records = records_of(finished, locate)
    counters["connections"] = len(records)
    return records, counters
