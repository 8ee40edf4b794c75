"""QUIC connections from the client-to-server direction (issue 17, docs/quic.md).

The same method as TCP's (15-minute windows of the first packet, ended or judged at the cutoff by the
core's rules), with the stages read from what a passive observer of client packets can see of QUIC:
Initials only, Handshake packets, one or several 1-RTT flights. ``packet`` (the header record),
``udp`` (frames to datagrams), ``reader`` (datagram bytes to header records: the edge side, the one
place a payload is read), ``table`` (attempts per 4-tuple, bytes-free: the worker side), ``classify``
(level, stage, tags), ``record`` (the QUIC record), ``offline`` (capture files to records: reader + table).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> submodule, imported on first use: the wire codec imports ``quic.packet`` alone and must not
# pay for the offline reader's imports (capture files, the classifier) in every worker and edge
_WHERE = {
    "Attempt": "table", "QuicFinished": "table", "QuicTable": "table", "step": "table",
    "Hello": "packet", "QuicDatagram": "packet", "QuicPacketRecord": "packet", "dcid_tag": "packet",
    "QuicReader": "reader",
    "QuicRecord": "record", "build_quic_record": "record", "quic_connection_id": "record",
    "record_of": "record", "sni_value": "record",
    "QuicVerdict": "classify", "flights_of": "classify", "level_of": "classify", "rtt_of": "classify",
    "verdict": "classify",
    "classify_files": "offline", "run_files": "offline",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{where}"), name)
