"""The QUIC connection record: one per classified attempt (docs/quic.md). A dict like
``rstscope.core.record.ConnectionRecord``, with ``transport: "quic"`` and the QUIC fields."""

from __future__ import annotations

import hashlib
from typing import TypedDict

from rstscope.config import MODE_WINDOW
from rstscope.core.record import endpoint_fields
from rstscope.packet import pack_key
from rstscope.quic.classify import QuicVerdict, classify_attempt
from rstscope.quic.packet import Key
from rstscope.quic.table import QuicFinished

SNI_POLICIES = ("keep", "hash", "none")
SNI_HASH_HEX = 16


class QuicRecord(TypedDict):
    """One classified QUIC connection attempt."""

    id: str  # 16 hex digits, stable: 4-tuple, original DCID's tag and first packet's microsecond
    transport: str  # "quic"
    window_start: int  # start of the 15-minute window of its first Initial (Unix seconds)
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    ip_version: int  # 4 or 6
    quic_version: int  # of its first Initial (a reserved/unknown one for an attempt Version Negotiation ended)
    odcid_len: int  # length of the original Destination Connection ID (the ID itself is not published)
    first_ts: float  # its first and last client datagram (Unix seconds, microsecond precision)
    last_ts: float
    packets: int  # client datagrams it holds (<= max_packets)
    stage: str  # post_syn | post_ack | post_psh | no_match (QUIC meanings, docs/quic.md)
    tags: list[str]  # timeout | client_close | vn_restart | retry_restart | restart, then initial_repeat
    end: str  # close | cap | restart | cutoff
    level: int  # 0 Initials only, 1 Handshake, 2 one 1-RTT flight, 3 several
    flights: int  # client flights with 1-RTT packets
    rtt_ms: float | None  # first Handshake minus first Initial; None without a Handshake packet
    sni: str | None  # after the SNI policy (keep | hash | none); None when absent or not read
    alpn: list[str]  # ALPN protocols of the ClientHello
    mode: str  # "window": the blog's method
    country: str  # the client's (XX unknown), as TCP records: the rollups count per country and ASN
    asn: int
    as_name: str


def sni_value(sni: str | None, policy: str = "hash") -> str | None:
    """The SNI as the policy lets it leave: ``keep`` as is, ``hash`` the first 16 hex digits of the
    SHA-256 of the lowercase name (a pseudonym to count and join on: anyone can hash a list of
    names, so it is not secret), ``none`` never."""
    if policy not in SNI_POLICIES:
        raise ValueError(f"sni policy must be one of {', '.join(SNI_POLICIES)}")
    if sni is None or policy == "none":
        return None
    if policy == "keep":
        return sni
    return hashlib.sha256(sni.lower().encode("ascii", "backslashreplace")).hexdigest()[:SNI_HASH_HEX]


def quic_connection_id(key: Key, odcid: bytes, first_ts: float) -> str:
    """16 hex digits from the 4-tuple, the original DCID's tag (``packet.dcid_tag``: what leaves the
    edge) and the first packet's microsecond."""
    h = hashlib.blake2b(digest_size=8, person=b"rstscope-quic")
    h.update(pack_key(*key))
    h.update(bytes((len(odcid),)) + odcid + round(first_ts * 1e6).to_bytes(8, "big", signed=True))
    return h.hexdigest()


def build_quic_record(key: Key, window_start: int, version: int, odcid: bytes, odcid_len: int, first_ts: float,
                      last_ts: float, packets: int, v: QuicVerdict, end: str, sni: str | None,
                      alpn: tuple[str, ...], country: str = "XX", asn: int = 0, as_name: str = "") -> QuicRecord:
    """The record of a classified attempt: the one place its fields are filled. ``sni`` is already
    what the SNI policy let leave the edge (the reader applied ``sni_value``)."""
    return {
        "id": quic_connection_id(key, odcid, first_ts),
        "transport": "quic",
        "window_start": window_start,
        **endpoint_fields(key),
        "quic_version": version,
        "odcid_len": odcid_len,
        "first_ts": round(first_ts, 6),
        "last_ts": round(last_ts, 6),
        "packets": packets,
        "stage": v.stage,
        "tags": list(v.tags),
        "end": end,
        "level": v.level,
        "flights": v.flights,
        "rtt_ms": None if v.rtt is None else round(v.rtt * 1000, 3),
        "sni": sni,
        "alpn": list(alpn),
        "mode": MODE_WINDOW,
        "country": country,
        "asn": asn,
        "as_name": as_name,
    }


def record_of(fin: QuicFinished, country: str = "XX", asn: int = 0, as_name: str = "") -> QuicRecord:
    """The record of a finished attempt that was not excluded: offline and the worker both call this."""
    a = fin.attempt
    return build_quic_record(a.key, a.window_start, a.version, a.odcid, a.odcid_len, a.first_ts, a.last_ts,
                             a.datagrams, classify_attempt(fin), fin.end, a.sni, a.alpn, country, asn, as_name)
