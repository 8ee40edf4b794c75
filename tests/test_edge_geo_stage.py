"""Geolocation done at the edge (before the client address was hidden) reaches the connection record."""

from __future__ import annotations

from builders import T0, ack, rstack, spaced, syn

from rstscope import config
from rstscope.codecs.packet import EdgeGeo, Watermark, encode_packet, encode_watermark
from rstscope.streams.connection_agent import ConnectionStage


def test_worker_uses_the_edge_geolocation() -> None:
    stage = ConnectionStage(config.load())
    hidden = bytes([240, 1, 2, 3])  # what a hash:KEYFILE transform leaves of the client address
    out = []
    for p in spaced([syn(src=hidden), ack(src=hidden), rstack(src=hidden)]):
        recs, err = stage.feed(0, encode_packet(p, EdgeGeo("DE", 3320)), object())
        assert err is None
        out += recs
    plain = spaced([syn(sport=2), ack(sport=2)])
    for p in plain:
        out += stage.feed(0, encode_packet(p), object())[0]
    out += stage.feed(0, encode_watermark(Watermark(T0 + 60, "edge", False)), object())[0]
    by_port = {r["client_port"]: r for r in out}
    assert (by_port[40000]["country"], by_port[40000]["asn"], by_port[40000]["client_ip"]) == ("DE", 3320, "240.1.2.3")
    assert (by_port[2]["country"], by_port[2]["asn"]) == ("XX", 0)
    assert stage.parts[0].edge_geo == {}
