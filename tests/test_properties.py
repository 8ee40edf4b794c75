"""Property tests: order within a connection does not matter; packets after the 10th change nothing."""

from __future__ import annotations

from builders import ISN, SISN, T0, pkt, syn
from hypothesis import given, settings
from hypothesis import strategies as st

from rstscope.config import EvidenceParams, WindowParams
from rstscope.core.classify import classify
from rstscope.core.record import make_record
from rstscope.core.table import ConnectionTable
from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN

FLAGS = st.sampled_from([TH_ACK, TH_PSH | TH_ACK, TH_RST, TH_RST | TH_ACK, TH_FIN | TH_ACK])


@st.composite
def client_packet(draw: st.DrawFn) -> object:
    flags = draw(FLAGS)
    return pkt(
        flags,
        seq=ISN + 1 + draw(st.sampled_from([0, 0, 100, 200, 300])),
        ack=draw(st.sampled_from([0, SISN + 1, SISN + 1, SISN + 500])),
        payload=draw(st.sampled_from([0, 0, 100])) if not flags & TH_RST else 0,
        ttl=draw(st.sampled_from([64, 64, 64, 120])),
        ipid=draw(st.integers(0, 65535)),
        ts=T0,
    )


CONNECTION = st.lists(client_packet(), min_size=0, max_size=9).map(lambda rest: [syn(ts=T0), *rest])


@settings(max_examples=400, deadline=None)
@given(CONNECTION, st.randoms(use_true_random=False))
def test_classification_does_not_depend_on_packet_order(packets, rnd):
    shuffled = list(packets)
    rnd.shuffle(shuffled)
    assert classify(packets) == classify(shuffled)


W = WindowParams(900, 10, 10, 10)


def records(packets) -> list[dict]:
    t = ConnectionTable(W)
    out = []
    for i, p in enumerate(packets):
        out += t.add(p._replace(ts=T0 + i * 0.001))
    out += t.close(T0 + 60)
    return [make_record(f.conn, 10, EvidenceParams(), W.mode) for f in out if f.excluded is None]


@settings(max_examples=300, deadline=None)
@given(st.lists(client_packet(), min_size=9, max_size=9), st.lists(client_packet(), min_size=1, max_size=8))
def test_packets_after_the_tenth_never_change_the_result(first, extra):
    ten = [syn(), *first]
    base = records(ten)
    more = records(ten + extra)
    assert base and base[0]["stage"] == more[0]["stage"]
    assert [(r["id"], r["stage"], r["tags"], r["signature"]) for r in more][:1] == \
        [(r["id"], r["stage"], r["tags"], r["signature"]) for r in base]


TUPLE_PACKET = st.builds(
    lambda flags, seq, port, dt: (flags, seq, port, dt),
    st.sampled_from((TH_SYN, TH_SYN, TH_ACK, TH_PSH | TH_ACK, TH_FIN | TH_ACK, TH_RST, TH_RST | TH_ACK,
                     TH_SYN | TH_FIN)),
    st.sampled_from((ISN, ISN + 1, ISN + 7777)),
    st.sampled_from((40000, 40001)),
    st.sampled_from((0.0, 0.001, 0.5, 2.9, 3.0, 9.99, 10.0, 30.0, 400.0)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(TUPLE_PACKET, min_size=1, max_size=40), st.sampled_from(("window", "idle")))
def test_the_gate_passes_exactly_what_the_table_takes(steps, mode):
    """The edge's gate runs the table's rule without its packets: behind the gate the table makes the
    same connections as on every packet, and counts the same packets as not taken."""
    import dataclasses

    from rstscope.direction import Direction
    from rstscope.sampling import Gate, Sampler

    params = dataclasses.replace(W, mode=mode, idle_s=3.0)
    t = T0
    packets = []
    for flags, seq, port, dt in steps:
        t += dt
        packets.append(syn(ts=t)._replace(flags=flags, seq=seq, sport=port))
    gate = Gate(Direction(), Sampler(1.0), params)
    behind, alone = ConnectionTable(params), ConnectionTable(params)
    got, want = [], []
    for p in packets:
        if gate.admit(p):
            got += behind.add(p)
        want += alone.add(p)
    got += behind.close(t)
    want += alone.close(t)
    assert [(f.conn.packets, f.excluded) for f in got] == [(f.conn.packets, f.excluded) for f in want]
    dropped = ("no_syn", "after_close", "beyond_max_packets", "after_idle")
    assert {k: gate.counters[k] + behind.counters[k] for k in dropped} == {k: alone.counters[k] for k in dropped}
