"""QUIC connections from the client-to-server direction (issue 17, docs/quic.md).

The same method as TCP's (15-minute windows of the first packet, ended or judged at the cutoff by the
core's rules), with the stages read from what a passive observer of client packets can see of QUIC:
Initials only, Handshake packets, one or several 1-RTT flights. ``packet`` (the header record),
``udp`` (frames to datagrams), ``table`` (attempts per 4-tuple), ``classify`` (level, stage, tags),
``record`` (the QUIC record), ``offline`` (capture files to records).
"""

from __future__ import annotations

from rstscope.quic.classify import QuicVerdict, flights_of, level_of, rtt_of, verdict
from rstscope.quic.offline import classify_files, run_files
from rstscope.quic.packet import QuicPacketRecord
from rstscope.quic.record import QuicRecord, build_quic_record, quic_connection_id, sni_value
from rstscope.quic.table import Attempt, QuicFinished, QuicTable, step

__all__ = [
    "Attempt",
    "QuicFinished",
    "QuicPacketRecord",
    "QuicRecord",
    "QuicTable",
    "QuicVerdict",
    "build_quic_record",
    "classify_files",
    "flights_of",
    "level_of",
    "quic_connection_id",
    "rtt_of",
    "run_files",
    "sni_value",
    "step",
    "verdict",
]
