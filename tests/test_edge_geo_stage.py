"""Geolocation done at the edge (before the client address was hidden) reaches the connection record."""

from __future__ import annotations

from builders import T0, ack, rstack, spaced, syn

from rstscope import config
from rstscope.codecs.packet import EdgeGeo, Watermark, encode_packet, encode_watermark
from rstscope.streams.connection_agent import ConnectionStage


def test_worker_uses_the_edge_geolocation() -> None:
    stage = ConnectionStage(config.load(), warmup_s=0)
    hidden = bytes([240, 1, 2, 3])  # what a hash:KEYFILE transform leaves of the client address
    out = []
    for p in spaced([syn(src=hidden), ack(src=hidden), rstack(src=hidden)]):
        recs, err = stage.feed(0, encode_packet(p, EdgeGeo("DE", 3320), "edge"), object())
        assert err == []
        out += recs
    plain = spaced([syn(sport=2), ack(sport=2)])
    for p in plain:
        out += stage.feed(0, encode_packet(p, edge="edge"), object())[0]
    # a minute later: the reset connection is past its grace period; the other one has not ended and
    # waits for its window to close, or for the edge's end of input
    out += stage.feed(0, encode_watermark(Watermark(T0 + 60, "edge", False)), object())[0]
    assert [r["client_port"] for r in out] == [40000]
    # the edge's answer lives on the connection (no table beside it): the plain one never had one
    assert [c.meta for c in stage.parts[0].table.open.values()] == [None]
    out += stage.feed(0, encode_watermark(Watermark(T0 + 60, "edge", True)), object())[0]
    by_port = {r["client_port"]: r for r in out}
    assert (by_port[40000]["country"], by_port[40000]["asn"], by_port[40000]["client_ip"]) == ("DE", 3320, "240.1.2.3")
    assert (by_port[2]["country"], by_port[2]["asn"], by_port[2]["stage"]) == ("XX", 0, "post_ack")
    assert by_port[2]["tags"] == ["timeout"]
    assert not stage.parts[0].table.open


def test_edge_geolocation_of_a_connection_its_first_packet_decides() -> None:
    """max_packets 1: the SYN decides its connection at once; the record still carries the edge's answer."""
    topo = config.Topology(window=config.WindowParams(max_packets=1))
    stage = ConnectionStage(topo, warmup_s=0)
    hidden = bytes([240, 1, 2, 3])
    out, _ = stage.feed(0, encode_packet(syn(src=hidden), EdgeGeo("FR", 3215), "edge"), object())
    out += stage.feed(0, encode_watermark(Watermark(T0 + 60, "edge", True)), object())[0]
    assert [(r["country"], r["asn"]) for r in out] == [("FR", 3215)]
