"""The classified-connection record: one per finished connection, the unit every consumer reads.

Field by field in docs/wire-formats.md. The id is stable (the same connection gets the same id on
every run and in every path), so consumers of the connections topic can de-duplicate on it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from rstscope.config import EvidenceParams
from rstscope.core.classify import POST_SYN, classify
from rstscope.core.table import Connection
from rstscope.packet import ip_text

RECORD_VERSION = 1


def connection_id(conn: Connection) -> str:
    """16 hex digits from the 5-tuple, the SYN's sequence number and the first packet's microsecond."""
    client_ip, client_port, server_ip, server_port = conn.key
    h = hashlib.blake2b(digest_size=8)
    h.update(client_ip + client_port.to_bytes(2, "big") + server_ip + server_port.to_bytes(2, "big"))
    h.update(conn.syn_seq.to_bytes(4, "big") + round(conn.first_ts * 1e6).to_bytes(8, "big", signed=True))
    return h.hexdigest()


def make_record(conn: Connection, max_packets: int, evidence: EvidenceParams,
                country: str = "XX", asn: int = 0, as_name: str = "") -> dict[str, Any]:
    """Classify a finished connection and describe it as a JSON-ready record."""
    v = classify(conn.packets, max_packets, evidence)
    client_ip, client_port, server_ip, server_port = conn.key
    return {
        "v": RECORD_VERSION,
        "id": connection_id(conn),
        "window_start": conn.window_start,
        "client_ip": ip_text(client_ip),
        "client_port": client_port,
        "server_ip": ip_text(server_ip),
        "server_port": server_port,
        "ip_version": 4 if len(client_ip) == 4 else 6,
        "first_ts": round(conn.first_ts, 6),
        "last_ts": round(conn.last_ts, 6),
        "packets": len(conn.packets),
        "stage": v.stage,
        "tags": list(v.tags),
        "signature": v.signature,
        "ttl_delta": v.ttl_delta,
        "ipid_delta": v.ipid_delta,
        "injected": v.injected,
        "scanner": v.scanner,
        "country": country,
        "asn": asn,
        "as_name": as_name,
        # Post-SYN sources are not confirmed by a handshake and may be spoofed.
        "geo_reliable": v.stage != POST_SYN,
    }
