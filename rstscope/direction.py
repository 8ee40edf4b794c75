"""Which way a packet travels: client -> server, server -> client, or not known without state.

The server side comes from configuration (addresses or CIDRs, ports). Without configuration the
direction is learnt from the handshake: the endpoint that received a connection's first SYN is its
server, which the edge gate tracks for the connections it keeps (see sampling.Gate).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from rstscope.packet import TH_ACK, TH_SYN, V6_BASE, PacketRecord

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Dir(enum.IntEnum):
    C2S = 1  # client to server: kept
    S2C = 2  # server to client: never kept (one direction only)
    OTHER = 3  # configured servers, but this packet is to or from none of them
    UNKNOWN = 4  # no configuration: decided from handshake state


C2S, S2C, OTHER, UNKNOWN = Dir  # module names: an enum member lookup costs ~70 ns a packet in Python 3.11


def is_synack(flags: Any) -> Any:
    """A SYN-ACK: it always comes from the server (ints or numpy arrays)."""
    return flags & (TH_SYN | TH_ACK) == (TH_SYN | TH_ACK)


class Direction:
    """Stateless direction from configured server addresses and/or ports."""

    def __init__(self, server_nets: Iterable[str] = (), server_ports: Iterable[int] = ()) -> None:
        self.nets: tuple[Network, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in server_nets)
        self.ports = frozenset(int(p) for p in server_ports)
        for p in self.ports:
            if not 0 < p < 65536:
                raise ValueError(f"server port {p} is not in 1..65535")
        self.configured = bool(self.nets or self.ports)
        self._cache: dict[bytes, bool] = {}

    def _is_server_ip(self, packed: bytes) -> bool:
        hit = self._cache.get(packed)
        if hit is None:
            addr = ipaddress.ip_address(packed)
            hit = any(addr in n for n in self.nets)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[packed] = hit
        return hit

    def _is_server(self, ip: bytes, port: int) -> bool:
        if self.nets:
            hit = self._cache.get(ip)  # _is_server_ip's cache, read here first: one call less per packet
            if not (self._is_server_ip(ip) if hit is None else hit):
                return False
        return not self.ports or port in self.ports

    def of(self, pkt: PacketRecord) -> Dir:
        if not self.configured:
            if is_synack(pkt.flags):
                return S2C  # a SYN-ACK always comes from the server
            return UNKNOWN
        if self._is_server(pkt.dst, pkt.dport):
            return C2S
        if self._is_server(pkt.src, pkt.sport):
            return S2C
        return OTHER

    def codes(self, flags: Any, src: Any, sport: Any, dst: Any, dport: Any,
              packed: Callable[[int], bytes]) -> npt.NDArray[np.int8]:
        """``of`` for columns of packets (numpy arrays; addresses as ids that ``packed`` turns into
        bytes): each packet's ``Dir`` as an int8."""
        if not self.configured:
            return np.where(is_synack(flags), np.int8(S2C), np.int8(UNKNOWN)).astype(np.int8)
        to = self._server_mask(dst, dport, packed)
        back = self._server_mask(src, sport, packed)
        out: npt.NDArray[np.int8] = np.where(to, np.int8(C2S), np.where(back, np.int8(S2C), np.int8(OTHER)))
        return out.astype(np.int8, copy=False)

    def _server_mask(self, ips: Any, ports: Any, packed: Callable[[int], bytes]) -> npt.NDArray[np.bool_]:
        """``_is_server`` for columns of address ids (``fastpath.reader.AddressTable``)."""
        ok = np.ones(len(ips), dtype=bool)
        if self.nets:
            v4 = ips < V6_BASE  # an IPv4 address's id is its value: ``addr in net`` is a mask and a compare
            hit = np.zeros(len(ips), dtype=bool)
            for n in self.nets:
                if n.version == 4:
                    hit |= v4 & ((ips & int(n.netmask)) == int(n.network_address))
            if not bool(v4.all()):
                rest = np.flatnonzero(~v4)
                uniq, inv = np.unique(ips[rest], return_inverse=True)
                each = np.fromiter((self._is_server_ip(packed(int(u))) for u in uniq), bool, len(uniq))
                hit[rest] = each[inv.ravel()]
            ok &= hit
        if self.ports:
            ok &= np.isin(ports, np.fromiter(self.ports, np.int64, len(self.ports)))
        return ok
