"""Classification of many held connections at once (fastpath.verdicts) against the reference make_record.

The streaming worker classifies what a checkpoint finished in one numpy pass; every record must be the
one ``make_record`` gives the same connection, whatever the mix (RSTs, several SYNs, scanners' SYNs,
IPv6, data after data, FINs) and whatever the order of its packets.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from builders import CLIENT, ISN, SERVER, SISN, T0, pkt, syn
from hypothesis import given, settings
from hypothesis import strategies as st

from rstscope.config import EvidenceParams, load
from rstscope.core.classify import SCANNERS, classify, scanner_mark
from rstscope.core.record import make_record
from rstscope.core.table import Connection
from rstscope.fastpath.verdicts import Rows, in_columns, make_records, plain_codes, reset_verdicts, verdict
from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, unpack_key
from rstscope.streams.connection_agent import ConnectionStage, Decided
from rstscope.streams.metrics import route

V6_CLIENT = bytes(range(1, 17))
V6_SERVER = bytes(range(17, 33))

FLAGS = st.sampled_from([TH_ACK, TH_ACK, TH_PSH | TH_ACK, TH_PSH | TH_ACK, TH_FIN | TH_ACK, TH_FIN, TH_RST,
                         TH_RST | TH_ACK, TH_SYN, TH_SYN | TH_FIN, TH_ACK | TH_SYN])


@st.composite
def later_packet(draw: st.DrawFn, v6: bool, t: float) -> object:
    flags = draw(FLAGS)
    return pkt(flags, seq=(ISN + draw(st.sampled_from([0, 1, 1, 101, 201, 1461, 4381, 2**32 - 5]))) % 2**32,
               ack=draw(st.sampled_from([0, SISN + 1, SISN + 1, SISN + 900])),
               payload=draw(st.sampled_from([0, 0, 100])) if not flags & TH_RST else 0,
               ttl=draw(st.sampled_from([64, 64, 63, 120, 255])), ipid=draw(st.sampled_from([100, 101, 7, 65535])),
               window=draw(st.sampled_from([0, 501, 64240])), ts=t + draw(st.sampled_from([0.0, 0.01, 3.0])),
               src=V6_CLIENT if v6 else CLIENT, dst=V6_SERVER if v6 else SERVER)


@st.composite
def connection(draw: st.DrawFn) -> Connection:
    v6 = draw(st.booleans())
    t = T0 + draw(st.integers(0, 100))
    first = syn(ts=t, window=draw(st.sampled_from([64240, 65535, 1024, 2048])),
                ipid=draw(st.sampled_from([100, 54321, 0])), opt_len=draw(st.sampled_from([20, 4, 0])),
                ttl=draw(st.sampled_from([64, 255])), seq=draw(st.sampled_from([ISN, 0x0A000002, 0x0A000001])),
                src=V6_CLIENT if v6 else CLIENT, dst=V6_SERVER if v6 else SERVER)
    packets = [first, *draw(st.lists(later_packet(v6, t), max_size=9))]
    packets = draw(st.permutations(packets))  # held rows need not start with the SYN
    conn = Connection(packets[0].tuple_key, int(t // 900 * 900), first.seq, min(p.ts for p in packets),
                      max(p.ts for p in packets), packets, refs=range(len(packets)))
    conn.syns = sum(1 for p in packets if p.flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN)
    return conn


EV = EvidenceParams()
PLACES = st.sampled_from([("XX", 0, ""), ("DE", 3320, "DTAG")])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(connection(), PLACES), max_size=12), st.sampled_from([10, 4]),
       st.sampled_from(["window", "idle"]))
def test_a_batch_is_classified_as_one_by_one(items, max_packets, mode):
    conns = [c for c, _ in items]
    places = [p for _, p in items]
    got = make_records(conns, places, max_packets, EV, mode)
    assert got == [make_record(c, max_packets, EV, mode, *p) for c, p in zip(conns, places, strict=True)]


def _columns(conns: list[Connection]) -> tuple[Rows, np.ndarray, list[list]]:
    """The connections as runs of rows, their SYNs' scanner codes (by the scalar rule), their packets."""
    r = Rows.held(conns)
    pkts = [c.packets for c in conns]
    syns = [next((p for p in ps if p.flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN), None) for ps in pkts]
    marks = [None if s is None else scanner_mark(s) for s in syns]
    return r, np.array([0 if m is None else 1 + SCANNERS.index(m) for m in marks], dtype=np.int64), pkts


def _one_syn(r: Rows) -> np.ndarray:
    return r.count((r.fl & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(connection(), min_size=1, max_size=12))
def test_the_column_rule_gives_classify_for_every_connection_it_serves(conns):
    """``plain_codes`` itself (not the reference fallback) for the connections without an RST and with
    one SYN: the codes it gives are ``classify``'s verdicts."""
    r, scan, pkts = _columns(conns)
    served = ~r.any((r.fl & TH_RST) != 0) & _one_syn(r)
    codes = plain_codes(r, scan, 10)
    for i in np.nonzero(served)[0].tolist():
        assert verdict(int(codes[i])) == classify(pkts[i], 10, EV)


@settings(max_examples=400, deadline=None)
@given(st.lists(connection(), min_size=1, max_size=12), st.sampled_from([EV, EvidenceParams(injected_ttl_delta=1,
                                                                                             injected_ipid_delta=1)]))
def test_the_reset_columns_give_classify_for_every_connection_they_serve(conns, ev):
    """``reset_verdicts`` itself for the reset connections with one SYN and fewer than three RST+ACKs."""
    r, scan, pkts = _columns(conns)
    rst = (r.fl & TH_RST) != 0
    served = np.nonzero(r.any(rst) & _one_syn(r) & in_columns(r))[0]
    got = reset_verdicts(r, served, scan, ev)
    assert got == [classify(pkts[i], 10, ev) for i in served.tolist()]


def test_the_reset_columns_see_every_tag_and_basis():
    """Hand-made resets that reach each composition, the acknum tags, gfw_type1, both evidence bases and
    the IP ID delta across the 16-bit wrap, through the columns and through classify."""
    from builders import ack, psh, rst, rstack
    cases = [
        [syn(), ack(), psh(), rst()],  # single_rst, packets
        [syn(), rst(ack_no=0), rst(ack_no=0)],  # multiple_rsts, acknumsame0, syn_only
        [syn(), ack(), rst(ack_no=7), rst(ack_no=9)],  # acknumdiff
        [syn(), ack(), rst(ack_no=0), rst(ack_no=9)],  # acknumdiff0
        [syn(), ack(), rst(ack_no=5), rst(ack_no=5)],  # acknumsame
        [syn(), ack(), psh(), rstack(), rstack()],  # multiple_rstacks
        [syn(), ack(), rst(), rstack()],  # rst_and_rstacks
        [syn(), ack(), psh(), psh(seq=ISN + 101), rst(ttl=40, window=4321)],  # gfw_type1, later_in_flow
        [syn(ipid=65530), ack(ipid=65531), rst(ipid=3)],  # ipid delta across the wrap: 8 (65531 -> 3)
        [syn(window=65535, ipid=54321), rst(ttl=200)],  # a zmap SYN: scanner basis, never injected
    ]
    conns = [Connection(ps[0].tuple_key, int(T0 // 900 * 900), ISN, T0, T0, ps) for ps in cases]
    r, scan, pkts = _columns(conns)
    got = reset_verdicts(r, np.arange(len(conns)), scan, EV)
    assert got == [classify(ps, 10, EV) for ps in pkts]
    tags = {t for v in got for t in v.tags}
    assert {"single_rst", "multiple_rsts", "acknumsame0", "acknumdiff", "acknumdiff0", "acknumsame",
            "multiple_rstacks", "rst_and_rstacks", "gfw_type1", "zmap"} <= tags
    assert {v.evidence for v in got} == {"packets", "syn_only", "scanner"}
    assert got[8].ipid_delta == 8 and got[9].injected is False


def test_scanner_marks_from_the_key_ipv4_and_ipv6():
    """masscan's and mirai's marks read the server address and port from the key: both families."""
    dst = int.from_bytes(SERVER, "big")
    masscan = syn(window=1024, ipid=(dst ^ 443 ^ ISN) & 0xFFFF, opt_len=0, ttl=64)
    mirai = syn(seq=dst, ttl=64)
    v6 = syn(src=V6_CLIENT, dst=V6_SERVER, window=65535, opt_len=4)
    conns = [Connection(p.tuple_key, int(T0 // 900 * 900), p.seq, T0, T0, [p]) for p in (masscan, mirai, v6)]
    recs = make_records(conns, [("XX", 0, "")] * 3, 10, EV, "window")
    assert [r["scanner"] for r in recs] == ["masscan", "mirai", "zmap"]
    assert recs == [make_record(c, 10, EV, "window") for c in conns]


def test_an_empty_connection_goes_to_the_reference():
    empty = Connection(syn().tuple_key, int(T0 // 900 * 900), ISN, T0, T0)
    full = Connection(syn().tuple_key, int(T0 // 900 * 900), ISN, T0, T0, [syn()])
    assert make_records([full, empty], [("XX", 0, "")] * 2, 10, EV, "window") == \
        [make_record(full, 10, EV, "window"), make_record(empty, 10, EV, "window")]


def test_the_stage_counts_a_connection_it_cannot_classify(caplog: pytest.LogCaptureFixture):
    """A held connection whose rows are corrupt (a bug) costs itself only: the others of its batch are
    emitted, in order, and it is logged and counted (``records_failed``)."""
    stage = ConnectionStage(load(), warmup_s=0)
    good = [Connection(syn(sport=s).tuple_key, int(T0 // 900 * 900), ISN, T0, T0, [syn(sport=s)])
            for s in (1000, 1001)]
    bad = Connection(syn(sport=1002).tuple_key, int(T0 // 900 * 900), ISN, T0, T0, [syn(sport=1002)])
    bad.body = bad.body[:-1]
    quic = {"transport": "quic", "id": "q"}
    with caplog.at_level(logging.ERROR):
        out = stage.records([Decided(good[0], ("XX", 0, "")), quic, Decided(bad, ("XX", 0, "")),
                             Decided(good[1], ("XX", 0, ""))])  # type: ignore[list-item]
    assert [r["client_port"] if "client_port" in r else r["id"] for r in out] == [1000, "q", 1001]
    assert stage.counters["records_failed"] == 1 and stage.counters["records"] == 2
    assert route("connections", "records_failed") == ("rstscope_connections_failed_total", ())  # on /metrics
    assert "could not be classified" in caplog.text
    assert unpack_key(good[0].pkey)[1] == 1000


def test_gfw_type2_goes_to_the_reference():
    """Three RST+ACKs at X, X+1460, X+4380 (gfw_type2's set rule, not in columns) in a batch of others."""
    from builders import ack, psh, rstack
    x = ISN + 1
    type2 = [syn(), ack(), psh(), rstack(seq=x), rstack(seq=x + 1460), rstack(seq=x + 4380)]
    near = [syn(sport=2), ack(sport=2), rstack(seq=x, sport=2), rstack(seq=x + 1460, sport=2)]
    conns = [Connection(ps[0].tuple_key, int(T0 // 900 * 900), ISN, T0, T0, ps) for ps in (type2, near)]
    recs = make_records(conns, [("XX", 0, "")] * 2, 10, EV, "window")
    assert recs == [make_record(c, 10, EV, "window") for c in conns]
    assert "gfw_type2" in recs[0]["tags"] and "gfw_type2" not in recs[1]["tags"]
