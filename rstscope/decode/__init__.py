"""Frames -> packet records: link layer, IP, TCP. No payload bytes survive decoding."""

from __future__ import annotations

from rstscope.decode.link import ip_start
from rstscope.decode.tcp import decode_ip_tcp
from rstscope.packet import PacketRecord

NON_TCP_REASONS = frozenset(("non_ip", "non_tcp"))


def decode_frame(ts: float, linktype: int, data: bytes) -> PacketRecord | str:
    """One frame to a packet record, or the reason it is not one (see NON_TCP_REASONS)."""
    start = ip_start(linktype, data)
    if isinstance(start, str):
        return start
    return decode_ip_tcp(ts, data, start[0], start[1])


__all__ = ["NON_TCP_REASONS", "decode_frame"]
