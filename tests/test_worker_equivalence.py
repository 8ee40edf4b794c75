"""The streaming worker's connection stage decides exactly what `rstscope analyze` decides (SPEC 4:
"for the same packets, the streaming result equals the offline result exactly"), in both modes.

Inputs are tests/test_fastpath.py's generated captures (interleaved connections on reused tuples, SYN
retransmissions and new ISNs, gaps at the timeout and grace +-1 us, window boundaries, time going
backwards, non-TCP frames, traffic in both directions) under its topologies (window and idle mode,
small windows, max_packets 3 and 4) and gate options.

- ``ConnectionStage`` fed the gate's admitted packets as msgpack records (rstscope/codecs/packet.py), then
  one eof watermark at the input's last frame time, emits the records of ``Analyzer`` (engine "packet")
  exactly: the same records, field for field.
- The edge's own path (``Edge`` with its periodic watermarks to every partition, packets spread over 8
  partitions by their tuple, one stage per partition, as the workers run) gives the same records when
  the capture's time never goes backwards (an edge's watermark promises that no older packet follows).
- Crashes: the stage is dropped right after each commit its in-order acks allow (and, in the unit
  tests, at random points with random flushes, several times) and a new one replays the partition from
  the committed offset. Every record of the uninterrupted run comes out, no other id ever does, and
  every copy of a record equals the original (the rollup keeps one per id), so a crash or a rebalance
  neither loses nor double counts a connection. This needs the pinned window openers of
  rstscope/streams/connection_agent.py: without them replays open connections the run absorbed.
"""

from __future__ import annotations

import dataclasses
import json
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rstscope.codecs.packet import Watermark, decode_message, encode_packet, encode_watermark
from rstscope.config import Topology, WindowParams
from rstscope.direction import Direction
from rstscope.edge.producer import Batches, Edge
from rstscope.offline import Analyzer, Options
from rstscope.sampling import Gate
from rstscope.streams.connection_agent import ConnectionStage
from tests.builders import ack, fin, pcap_bytes, psh, rst, spaced, syn
from tests.test_fastpath import OPTIONS, TOPOLOGIES, capture, scripted

PARTITIONS = 8
Frames = list[tuple[float, bytes]]


def _key(r: dict[str, Any]) -> str:
    return json.dumps(r, sort_keys=True)


def _analyze(path: Path, options: Options, topo: Topology) -> tuple[Analyzer, list[dict[str, Any]], list[bytes]]:
    """Analyzer's records (the per-packet reference) and the packets its gate admitted, as msgpack."""
    records: list[dict[str, Any]] = []
    an = Analyzer(topo, dataclasses.replace(options, engine="packet"), on_record=records.append)
    admitted: list[bytes] = []
    admit = an.gate.admit

    def spy(pkt: Any) -> bool:
        ok = admit(pkt)
        if ok:
            admitted.append(encode_packet(pkt, edge="edge"))
        return ok

    an.gate.admit = spy  # type: ignore[method-assign]
    an.run([path])
    assert an.engine_used == "packet"
    return an, records, admitted


def _messages(admitted: list[bytes], end_ts: float) -> list[bytes]:
    if end_ts == float("-inf"):
        return admitted  # no frame at all: nothing to end
    return [*admitted, encode_watermark(Watermark(end_ts, "edge", True))]


def _feed(stage: ConnectionStage, messages: list[bytes], partition: int = 0, start: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for offset, value in enumerate(messages, start):
        recs, err = stage.feed(partition, value, offset)
        assert err == [], err
        out.extend(recs)  # type: ignore[arg-type]
    return out


class _Producer:
    """What `Edge` needs of confluent-kafka's Producer: every message kept, in order, none refused."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes | None, dict[str, Any]]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.messages.append((value, key, kw))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


def _edge_partitions(path: Path, options: Options, topo: Topology, an: Analyzer,
                     batch_records: int = 500) -> dict[int, list[bytes]]:
    """`rstscope edge --pcap` without Kafka: each partition's messages, in the order it would hold them."""
    gate = Gate(Direction(options.server_ips, options.server_ports), an.gate.sampler, topo.window)
    prod = _Producer()
    Edge(prod, "packets", PARTITIONS, gate, "edge-1", watermark_interval=1.0,
         batches=Batches(PARTITIONS, max_records=batch_records)).run([path])
    parts: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for value, key, kw in prod.messages:
        p = kw["partition"] if key is None else zlib.crc32(key) % PARTITIONS  # any hash of the tuple will do
        parts[p].append(value)
    return parts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(capture(), scripted()), st.sampled_from(range(len(OPTIONS))), st.sampled_from(range(len(TOPOLOGIES))))
def test_stage_emits_the_records_of_analyze(tmp_path_factory: pytest.TempPathFactory, cap: tuple[Frames, bool],
                                            opt: int, topo_i: int) -> None:
    frames, monotonic = cap
    path = tmp_path_factory.mktemp("eq") / "c.pcap"
    path.write_bytes(pcap_bytes(frames))
    options, topo = OPTIONS[opt], TOPOLOGIES[topo_i]
    an, ref, admitted = _analyze(path, options, topo)
    stage = ConnectionStage(topo, warmup_s=0)
    got = _feed(stage, _messages(admitted, an.end_ts))
    assert sorted(map(_key, got)) == sorted(map(_key, ref))
    assert {r["mode"] for r in got} <= {topo.window.mode}
    if stage.parts:  # everything is decided and acked at the end of the input, counted as analyze does
        assert not stage.parts[0].table.open and stage.ackable(0) == list(range(len(admitted) + 1))
        assert +stage.parts[0].table.counters == +an.table.counters
    # the edge's own path (periodic watermarks, 8 partitions), on the capture in time order
    if not monotonic:
        path.write_bytes(pcap_bytes(sorted(frames, key=lambda f: f[0])))
        an, ref, _ = _analyze(path, options, topo)
    parts = _edge_partitions(path, options, topo, an)
    stage8 = ConnectionStage(topo, warmup_s=0)
    got8 = [r for p, msgs in parts.items() for r in _feed(stage8, msgs, p)]
    assert sorted(map(_key, got8)) == sorted(map(_key, ref))



def _copy_batches(parts: dict[int, list[bytes]], rng: random.Random) -> int:
    """Write about half of each partition's packet batches again, 1-4 messages later (before its
    end-of-input mark), as a duplicating transport would. Returns how many copies."""
    copies = 0
    for msgs in parts.values():
        batches = [i for i, m in enumerate(msgs) if not isinstance(decode_message(m), Watermark)]
        for i in sorted(rng.sample(batches, (len(batches) + 1) // 2), reverse=True):
            msgs.insert(min(len(msgs) - 1, i + rng.randint(1, 4)), msgs[i])
            copies += 1
    return copies


def _check_copies_dropped(path: Path, options: Options, topo: Topology, rng: random.Random,
                          batch_records: int = 500) -> int:
    an, ref, _ = _analyze(path, options, topo)
    parts = _edge_partitions(path, options, topo, an, batch_records)
    sent = sum(len(m.packets) for msgs in parts.values() for m in map(decode_message, msgs)
               if not isinstance(m, Watermark))
    copies = _copy_batches(parts, rng)
    stage = ConnectionStage(topo, warmup_s=0)
    got = [r for p, msgs in parts.items() for r in _feed(stage, msgs, p)]
    assert sorted(map(_key, got)) == sorted(map(_key, ref))
    assert stage.counters["duplicate_batches"] == copies and stage.counters["batches_missing"] == 0
    assert stage.counters["packets"] == sent
    return copies


def test_batches_written_twice_count_once() -> None:
    """The edge numbers its batches; a copy the transport wrote again later (an idempotent producer
    still can, around a whole-cluster outage: librdkafka issue 4953; it cost a connection in the fault
    tests, a second SYN made it multi_syn) is dropped and counted, and the records are as without it."""
    path = Path(__file__).parent / "fixtures" / "idle_timeouts.pcap"
    assert _check_copies_dropped(path, OPTIONS[0], TOPOLOGIES[0], random.Random(7), batch_records=2) >= 10


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(capture(), st.sampled_from(range(len(OPTIONS))), st.randoms(use_true_random=False))
def test_batches_written_twice_count_once_on_any_capture(tmp_path_factory: pytest.TempPathFactory,
                                                         cap: tuple[Frames, bool], opt: int,
                                                         rng: random.Random) -> None:
    frames, _monotonic = cap
    path = tmp_path_factory.mktemp("dup") / "c.pcap"
    path.write_bytes(pcap_bytes(sorted(frames, key=lambda f: f[0])))
    _check_copies_dropped(path, OPTIONS[opt], TOPOLOGIES[0], rng, batch_records=rng.choice((1, 3, 500)))

def _crashing_run(messages: list[bytes], topo: Topology, rng: random.Random, crashes: int
                  ) -> tuple[list[dict[str, Any]], int]:
    """Feed one partition; at random points commit what is ackable (a flush), and crash: a new stage
    replays from the committed offset. Returns every record emitted, copies included, and the replays."""
    points = sorted(rng.sample(range(1, len(messages) + 1), min(crashes, len(messages))))
    committed = 0
    out: list[dict[str, Any]] = []
    stage = ConnectionStage(topo, warmup_s=0)
    replays = 0
    offset = 0
    while offset < len(messages):
        recs, err = stage.feed(0, messages[offset], offset)
        assert err == []
        out.extend(recs)  # type: ignore[arg-type]
        offset += 1
        if rng.random() < 0.3:  # a flush: acks in offset order, then Faust commits them
            acked = stage.ackable(0)
            assert acked == list(range(committed, committed + len(acked)))
            committed += len(acked)
        if points and offset >= points[0]:
            points.pop(0)
            stage = ConnectionStage(topo, warmup_s=0)  # SIGKILL (or a rebalance): memory lost, the log stays
            replays += offset - committed
            offset = committed
    acked = stage.ackable(0)
    assert acked == list(range(committed, len(messages))), "every message is acked at the end of the input"
    return out, replays


def _replays_from_every_commit(messages: list[bytes], topo: Topology, ref: list[dict[str, Any]],
                               make_stage: Callable[[], ConnectionStage] | None = None) -> int:
    """Crash right after each commit the partition could make (each step of its ack frontier): the
    records emitted until then plus those of a fresh stage replaying from the committed offset are
    exactly the uninterrupted run's ids, and every copy equals the original. Returns the replays.
    (tests/test_quic_replay.py runs it on QUIC with its own stage clock.)"""
    new_stage = make_stage or (lambda: ConnectionStage(topo, warmup_s=0))
    want = {r["id"]: _key(r) for r in ref}
    stage = new_stage()
    emitted: set[str] = set()
    checkpoints: list[tuple[int, set[str]]] = []
    frontier = 0
    for off, value in enumerate(messages):
        emitted.update(r["id"] for r in stage.feed(0, value, off)[0])
        acked = stage.ackable(0)
        assert acked == list(range(frontier, frontier + len(acked)))
        if acked:
            frontier += len(acked)
            checkpoints.append((frontier, set(emitted)))
    assert frontier == len(messages), "every message is acked at the end of the input"
    for committed, before in checkpoints[:-1]:
        again = _feed(new_stage(), messages[committed:], start=committed)
        got = before | {r["id"] for r in again}
        assert got == set(want), (f"replay from offset {committed}: lost {sorted(set(want) - got)}, "
                                  f"added {sorted(got - set(want))}")
        for r in again:
            assert _key(r) == want[r["id"]], f"replay from offset {committed} changed {r['id']}"
    return len(checkpoints) - 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(capture(), scripted()), st.sampled_from(range(len(TOPOLOGIES))))
def test_crash_and_replay_lose_nothing_and_add_nothing(tmp_path_factory: pytest.TempPathFactory,
                                                       cap: tuple[Frames, bool], topo_i: int) -> None:
    # in time order: an out-of-order capture breaks the edge's watermark promise, and a replay may then
    # see another emission order (the rollup keeps one copy per id, but the copies can differ)
    frames = sorted(cap[0], key=lambda f: f[0])
    path = tmp_path_factory.mktemp("crash") / "c.pcap"
    path.write_bytes(pcap_bytes(frames))
    topo = TOPOLOGIES[topo_i]
    an, ref, admitted = _analyze(path, Options(), topo)
    messages = _messages(admitted, an.end_ts)
    _replays_from_every_commit(messages, topo, ref)


def test_absorbed_syn_after_a_commit_opens_nothing_on_replay() -> None:
    """Idle mode: SYNs retransmitted after their connection timed out are absorbed (``after_idle``). A
    replay starting after the connection's first SYN would open a connection with one of them (a
    record the uninterrupted run never made), so that SYN stays unacked until its window closes."""
    topo = Topology(window=WindowParams(mode="idle", idle_s=3.0))
    s = syn()
    packets = [s._replace(ts=s.ts + d) for d in (0, 1, 3, 7, 15)]  # Linux's SYN retransmission times
    packets += spaced([syn(sport=2), ack(sport=2), fin(sport=2)], start=s.ts + 20)
    msgs = _messages([encode_packet(p, edge="edge") for p in packets], s.ts + 60)
    stage = ConnectionStage(topo, warmup_s=0)
    recs = []
    for off, m in enumerate(msgs):
        recs += stage.feed(0, m, off)[0]
        if off < len(msgs) - 1:
            assert stage.ackable(0) == [], "the first SYN of the window is pinned until it closes"
    assert [r["client_port"] for r in recs] == [2]  # the retransmitting one is multi_syn
    assert stage.parts[0].table.counters["after_idle"] == 2
    assert stage.ackable(0) == list(range(len(msgs)))
    # acked as soon as its connection was decided, offset 4 would have been committed: a replay from
    # there opens a connection with the SYN of t+15 that the uninterrupted run absorbed
    again = ConnectionStage(topo, warmup_s=0)
    replay = [r for off in range(4, len(msgs)) for r in again.feed(0, msgs[off], off)[0]]
    assert {r["id"] for r in replay} - {r["id"] for r in recs}
    for seed in range(30):
        got, _ = _crashing_run(msgs, topo, random.Random(seed), 3)
        assert sorted(map(_key, {r["id"]: r for r in got}.values())) == sorted(map(_key, recs))


def test_held_until_the_window_closes_and_acked_after() -> None:
    """Window mode: an ended connection comes out grace_s after its last packet, and its packets are
    acked then; one that has not ended is held (and so are its packets) until its window closes."""
    topo = Topology()
    a = spaced([syn(sport=1), ack(sport=1), psh(sport=1), rst(sport=1)])  # ended by its RST
    b = spaced([syn(sport=2), ack(sport=2)], start=a[-1].ts + 0.5)  # not ended
    t = b[-1].ts
    msgs = [encode_packet(p, edge="edge") for p in (*a, *b)]
    stage = ConnectionStage(topo, warmup_s=0)
    assert _feed(stage, msgs) == []
    w = topo.window

    def wm(ts: float, eof: bool = False) -> bytes:
        return encode_watermark(Watermark(ts, "edge", eof))

    recs, _ = stage.feed(0, wm(a[-1].ts + w.grace_s - 1e-3), "w1")
    assert recs == [] and stage.ackable(0) == []
    recs, _ = stage.feed(0, wm(a[-1].ts + w.grace_s), "w2")
    assert [r["client_port"] for r in recs] == [1] and recs[0]["stage"] == "post_psh"
    assert stage.ackable(0) == [], "the first packet is the pinned opener of its tuple's window"
    window_end = (t // w.size_s + 1) * w.size_s
    recs, _ = stage.feed(0, wm(window_end - 1e-3), "w3")
    assert recs == []
    recs, _ = stage.feed(0, wm(window_end), "w4")
    assert [(r["client_port"], r["stage"], r["tags"]) for r in recs] == [(2, "post_ack", ["timeout"])]
    assert stage.ackable(0) == [0, 1, 2, 3, 4, 5, "w1", "w2", "w3", "w4"]


def test_rebalance_keeps_counts_exact_across_owners() -> None:
    """A partition moves to another worker mid-window: the new owner replays from the committed offset
    and emits the same records (same ids), and only those."""
    topo = Topology()
    rng = random.Random(5)
    packets = []
    t = 1_700_000_100.0
    for port in range(1, 60):
        kind = rng.choice(("rst", "fin", "open"))
        flow = {"rst": [syn(sport=port), ack(sport=port), rst(sport=port)],
                "fin": [syn(sport=port), ack(sport=port), psh(sport=port), fin(sport=port)],
                "open": [syn(sport=port), ack(sport=port)]}[kind]
        packets += spaced(flow, start=t, step=0.5)
        t += rng.choice((0.1, 2.0, 12.0))
    packets.sort(key=lambda p: p.ts)
    msgs = _messages([encode_packet(p, edge="edge") for p in packets], t + 30)
    ref = _feed(ConnectionStage(topo, warmup_s=0), msgs)
    for seed in range(20):
        got, replays = _crashing_run(msgs, topo, random.Random(seed), 3)
        assert {r["id"] for r in got} == {r["id"] for r in ref}
        want = {r["id"]: _key(r) for r in ref}
        assert all(_key(r) == want[r["id"]] for r in got)
