"""The classified-connection record: one per finished connection, the unit every consumer reads.

``ConnectionRecord`` is its one definition (as Zeek's conn.log is one typed record): both analysis
engines build it with ``build_record``, the summary and the rollup count it, the streaming workers
publish it (JSON) and the API and sink read it. docs/wire-formats.md repeats the fields for readers
of the topic. The id is stable (the same connection gets the same id on every run and in every
path), so consumers of the connections topic can de-duplicate on it.
"""

from __future__ import annotations

import hashlib
import struct
from typing import TypedDict

from rstscope.config import EvidenceParams
from rstscope.core.classify import POST_SYN, Verdict, classify
from rstscope.core.table import Connection, Key
from rstscope.packet import ip_text, pack_key

RECORD_VERSION = 2  # 2: evidence and mode fields; one composition tag per reset (docs/wire-formats.md)


class ConnectionRecord(TypedDict):
    """One classified connection (SPEC section 6)."""

    v: int  # RECORD_VERSION
    id: str  # 16 hex digits, stable across runs and paths (connection_id)
    window_start: int  # start of the 15-minute window of its SYN (Unix seconds)
    client_ip: str  # as the edge let it leave (may be hidden or truncated, docs/edge.md)
    client_port: int
    server_ip: str
    server_port: int
    ip_version: int  # 4 or 6
    first_ts: float  # its first and last client packet (Unix seconds, microsecond precision)
    last_ts: float
    packets: int  # client packets it holds (<= max_packets)
    stage: str  # post_syn | post_ack | post_psh | later_in_flow | no_match (Radar's dimension)
    tags: list[str]  # SPEC 5 tags, parents before the tags nested under them
    signature: str | None  # one of the paper's 19 signatures, or None
    ttl_delta: int | None  # how far its RSTs' TTL lies from its ordinary packets' (None: no RST)
    ipid_delta: int | None  # the same for the IPv4 IP ID
    injected: bool  # the deltas reach the thresholds of topology.yaml (never for a scanner's SYN)
    evidence: str | None  # what the deltas rest on: packets | syn_only | scanner | None (no RST)
    scanner: str | None  # zmap | masscan | mirai | nmap | generic | None
    country: str  # ISO 3166 alpha-2 of the client, XX when unknown
    asn: int  # 0 when unknown
    as_name: str
    geo_reliable: bool  # False for Post-SYN: no handshake confirmed the source address
    mode: str  # the method that decided it: window (the blog's) | idle (labelled, not comparable)


_ID_TAIL = struct.Struct("!Iq")  # the SYN's sequence number, the first packet's microsecond


def connection_id(key: Key | bytes, syn_seq: int, first_ts: float) -> str:
    """16 hex digits from the 5-tuple (or its ``pack_key`` bytes), the SYN's sequence number and the
    first packet's microsecond."""
    packed = key if isinstance(key, bytes) else pack_key(*key)
    return hashlib.blake2b(packed + _ID_TAIL.pack(syn_seq, round(first_ts * 1e6)), digest_size=8).hexdigest()


class Endpoints(TypedDict):
    """The connection's two ends, as every record (TCP and QUIC) spells them."""

    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    ip_version: int


def endpoint_fields(key: Key) -> Endpoints:
    """A record's endpoint fields from its 4-tuple: the one place they are spelled."""
    client_ip, client_port, server_ip, server_port = key
    return {"client_ip": ip_text(client_ip), "client_port": client_port, "server_ip": ip_text(server_ip),
            "server_port": server_port, "ip_version": 4 if len(client_ip) == 4 else 6}


def build_record(key: Key, window_start: int, syn_seq: int, first_ts: float, last_ts: float, packets: int,
                 v: Verdict, mode: str, country: str = "XX", asn: int = 0, as_name: str = "",
                 packed_key: bytes | None = None) -> ConnectionRecord:
    """The record of a classified connection: the one place its fields are filled. ``packed_key``:
    ``key`` as ``pack_key`` bytes, if the caller holds them already."""
    return {
        "v": RECORD_VERSION,
        "id": connection_id(key if packed_key is None else packed_key, syn_seq, first_ts),
        "window_start": window_start,
        **endpoint_fields(key),
        "first_ts": round(first_ts, 6),
        "last_ts": round(last_ts, 6),
        "packets": packets,
        "stage": v.stage,
        "tags": list(v.tags),
        "signature": v.signature,
        "ttl_delta": v.ttl_delta,
        "ipid_delta": v.ipid_delta,
        "injected": v.injected,
        "evidence": v.evidence,
        "scanner": v.scanner,
        "country": country,
        "asn": asn,
        "as_name": as_name,
        # Post-SYN sources are not confirmed by a handshake and may be spoofed.
        "geo_reliable": v.stage != POST_SYN,
        "mode": mode,
    }


def make_record(conn: Connection, max_packets: int, evidence: EvidenceParams, mode: str,
                country: str = "XX", asn: int = 0, as_name: str = "") -> ConnectionRecord:
    """Classify a finished connection and describe it as a record."""
    key = conn.key
    packets = conn.records(key)
    v = classify(packets, max_packets, evidence)
    return build_record(key, conn.window_start, conn.syn_seq, conn.first_ts, conn.last_ts,
                        len(packets), v, mode, country, asn, as_name, conn.pkey)
