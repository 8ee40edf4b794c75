"""Many edges on one partition (issue 14): the slowest live edge sets event time; an idle edge stops
holding windows back and holds them again when it returns; late packets and refused ones are counted
per edge; the input ends when every edge has ended or gone idle."""

from __future__ import annotations

from typing import Any

from builders import T0, ack, rstack, spaced, syn

from rstscope.codecs.packet import Watermark, encode_batch, encode_watermark, packet_fields
from rstscope.config import EdgeParams, Topology, WindowParams
from rstscope.packet import PacketRecord
from rstscope.streams.connection_agent import ConnectionStage
from rstscope.streams.edges import EdgeClocks

W = 900
WSTART = (int(T0) // W) * W


class Wall:
    """The worker's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0 + 2 * W  # a replay: the packets are in the past

    def __call__(self) -> float:
        return self.now


def _stage(idle_s: float = 30.0, max_ahead_s: float = 300.0, warmup_s: float = 0.0) -> tuple[ConnectionStage, Wall]:
    wall = Wall()
    topo = Topology(window=WindowParams(), edges=EdgeParams(idle_s=idle_s, max_ahead_s=max_ahead_s))
    return ConnectionStage(topo, clock=wall, warmup_s=warmup_s), wall


def _send(stage: ConnectionStage, edge: str, pkts: list[PacketRecord]) -> tuple[list[Any], list[Any]]:
    return stage.feed(0, encode_batch(edge, [packet_fields(p) for p in pkts]), object())


def _wm(stage: ConnectionStage, edge: str, ts: float, eof: bool = False) -> list[Any]:
    recs, errors = stage.feed(0, encode_watermark(Watermark(ts, edge, eof)), object())
    assert errors == []
    return recs


def test_clock_is_the_slowest_live_edge() -> None:
    c = EdgeClocks(idle_s=10)
    c.heard("a", 100.0, now=0)
    c.heard("b", 50.0, now=0)
    assert c.event_time(now=0) == 50.0
    c.promised("b", 70.0, eof=False, now=1)
    assert c.event_time(now=1) == 70.0
    c.promised("b", 80.0, eof=True, now=2)  # an ended edge holds nothing back
    assert c.event_time(now=2) == 100.0 and c.ended(now=2) is None  # a is live: the input has not ended
    assert c.check_idle(now=11) == ["a"] and c.check_idle(now=12) == []
    assert c.ended(now=12) == 80.0  # every edge ended or idle, one ended: the input is over at its end
    c.heard("a", 120.0, now=13)  # it returns: live again
    assert not c.edges["a"].idle and c.event_time(now=13) == 120.0 and c.ended(now=13) is None


def test_an_edge_ahead_does_not_close_the_others_windows() -> None:
    """Edge a runs into the next window (a fast clock, or simply ahead); b is still in this one: b's
    connection is not late, and its timeout is judged at its own window's end."""
    stage, wall = _stage()
    out, err = _send(stage, "b", [syn(sport=3, ts=T0 + 1)])
    assert err == [] and out == []
    out, err = _send(stage, "a", [syn(ts=T0), syn(sport=2, ts=WSTART + W + 5)])  # a is in the next window
    assert err == [] and out == []
    out, err = _send(stage, "b", [ack(sport=3, ts=T0 + 2)])
    assert err == [] and out == []
    table = stage.parts[0].table
    assert table.counters["late"] == 0 and table.current_window == WSTART  # b holds event time back: T0 + 1
    out = _wm(stage, "b", WSTART + W + 1)  # b passes the window's end: now it closes
    assert sorted(r["client_port"] for r in out) == [3, 40000]
    assert all(r["tags"] == ["timeout"] for r in out)
    status = {e.edge: e for e in stage.edge_status()}
    assert status["a"].watermark == WSTART + W + 5 and status["b"].watermark == WSTART + W + 1


def test_idle_edge_stops_holding_windows_and_its_late_packets_are_counted() -> None:
    stage, wall = _stage(idle_s=30)
    _send(stage, "a", [syn(ts=T0)])
    _send(stage, "b", [syn(sport=2, ts=T0)])
    _wm(stage, "a", WSTART + W + 1)
    assert stage.tick() == []  # b is live: the window stays open
    wall.now += 31  # b has been silent for longer than idle_s
    _send(stage, "a", [syn(sport=5, ts=WSTART + W + 2)])  # a keeps talking
    out = stage.tick()
    assert sorted(r["client_port"] for r in out) == [2, 40000]  # the window closed without b
    assert stage.counters["edges_idle"] == 1
    assert [e.idle for e in stage.edge_status() if e.edge == "b"] == [True]
    # b returns with a packet of the window that closed meanwhile: late, counted for b
    _send(stage, "b", [ack(sport=2, ts=T0 + 5)])
    st = {e.edge: e for e in stage.edge_status()}
    assert st["b"].late == 1 and st["a"].late == 0 and not st["b"].idle
    assert stage.parts[0].table.counters["late"] == 1


def test_input_ends_when_every_edge_ended_or_went_idle() -> None:
    """One edge killed halfway: once it is idle and the other sent its end of input, the analyze rule
    (the cutoff is the end of the input) decides what is left."""
    stage, wall = _stage(idle_s=30)
    _send(stage, "killed", [syn(ts=T0)])
    a = spaced([syn(sport=2), ack(sport=2), rstack(sport=2)])
    _send(stage, "a", a)
    assert _wm(stage, "a", T0 + 100, eof=True) == []  # "killed" is live: nothing is decided
    wall.now += 31
    out = stage.tick()
    ports = {r["client_port"]: r for r in out}
    assert sorted(ports) == [2, 40000]
    assert ports[40000]["tags"] == ["timeout"]  # quiet for 100 s before the end of the input
    assert stage.counters["inputs_ended"] == 1
    assert stage.ackable(0) == [] or not stage.parts[0].table.open


def test_records_too_far_ahead_are_refused_and_counted() -> None:
    stage, wall = _stage(max_ahead_s=300)
    out, errors = _send(stage, "fast", [syn(ts=wall.now + 301), syn(sport=2, ts=wall.now + 299)])
    assert [e.reason for e in errors] == ["ahead_of_clock"] and "fast" in str(errors[0])
    assert stage.counters["dead:ahead_of_clock"] == 1 and stage.counters["packets"] == 1
    recs, errors = stage.feed(0, encode_watermark(Watermark(wall.now + 400, "fast", False)), object())
    assert [e.reason for e in errors] == ["ahead_of_clock"]
    assert stage.parts[0].table.watermark == wall.now + 299  # the refused watermark moved nothing


def test_one_batch_message_is_acked_once_all_its_connections_are_decided() -> None:
    stage, wall = _stage()
    handles = []
    batch = [syn(ts=T0), syn(sport=2, ts=T0), rstack(sport=2, ts=T0 + 1)]
    h = object()
    handles.append(h)
    stage.feed(0, encode_batch("a", [packet_fields(p) for p in batch]), h)
    assert stage.ackable(0) == []  # both connections hold it (and it opened their tuples' windows)
    _wm(stage, "a", T0 + 60)  # the reset one is emitted; the other still holds the message
    assert stage.ackable(0) == []
    _wm(stage, "a", T0 + 61, eof=True)
    assert stage.ackable(0)[0] is h


def test_a_new_partition_waits_for_its_edges_before_closing_windows() -> None:
    """A worker cannot know an edge it has not heard from: a new partition's event time moves only
    warmup_s after its first message, so an edge that speaks a moment later still holds its window."""
    stage, wall = _stage(warmup_s=30)
    _send(stage, "a", [syn(ts=T0), syn(sport=2, ts=WSTART + W + 5)])  # a is already in the next window
    wall.now += 2
    _send(stage, "b", [syn(sport=3, ts=T0 + 1)])  # b joins two seconds later: not late
    assert stage.parts[0].table.counters["late"] == 0 and stage.tick() == []
    wall.now += 28  # warm (a went idle: silent for 30 s); b, live, sets event time: its window is open
    assert stage.tick() == [] and stage.parts[0].table.current_window == WSTART
    out = _wm(stage, "b", WSTART + W + 1)
    assert sorted(r["client_port"] for r in out) == [3, 40000]


def test_an_eof_during_warm_up_does_not_end_the_input() -> None:
    """Edge a ends while the partition warms up; edge b, heard a second later, still counts: the input
    ends at b's end, and a's quiet connection is a timeout judged there (found by the multi-edge test)."""
    stage, wall = _stage(warmup_s=3)
    _send(stage, "a", [syn(sport=1, ts=T0)])
    assert _wm(stage, "a", T0 + 5, eof=True) == []
    wall.now += 1
    _send(stage, "b", spaced([syn(sport=2), ack(sport=2), rstack(sport=2)], start=T0 + 1))
    assert _wm(stage, "b", T0 + 20, eof=True) == []  # still warming up
    wall.now += 3
    out = {r["client_port"]: r for r in stage.tick()}
    assert sorted(out) == [1, 2] and out[1]["tags"] == ["timeout"]
    assert stage.counters["inputs_ended"] == 1 and stage.parts[0].table.counters["incomplete"] == 0
