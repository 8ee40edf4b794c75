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
from rstscope.core.classify import classify
from rstscope.core.record import make_record
from rstscope.core.table import ROW_SIZE, Connection
from rstscope.fastpath.runs import reduce_runs
from rstscope.fastpath.verdicts import ROW_DTYPE, make_records, plain_codes, verdict
from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, unpack_key
from rstscope.streams.connection_agent import ConnectionStage, Decided

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


@settings(max_examples=300, deadline=None)
@given(st.lists(connection(), min_size=1, max_size=12))
def test_the_column_rule_gives_classify_for_every_connection_it_serves(conns):
    """``plain_codes`` itself (not the reference fallback) for the connections without an RST and with
    one SYN: the codes it gives are ``classify``'s verdicts."""
    lens = np.array([len(c.body) // ROW_SIZE for c in conns], dtype=np.int64)
    rows = np.frombuffer(b"".join(c.body for c in conns), ROW_DTYPE)
    heads = np.cumsum(lens) - lens
    run_of = np.repeat(np.arange(len(conns)), lens)
    fl = rows["flags"]
    served = ~reduce_runs(np.logical_or, (fl & TH_RST) != 0, heads) & (
        reduce_runs(np.add, ((fl & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN).astype(np.int64), heads) == 1)
    from rstscope.core.classify import scanner_mark
    pkts = [c.packets for c in conns]
    syns = [next((p for p in ps if p.flags & (TH_SYN | TH_ACK | TH_RST) == TH_SYN), None) for ps in pkts]
    from rstscope.core.classify import SCANNERS
    scan = np.array([0 if s is None or scanner_mark(s) is None else 1 + SCANNERS.index(scanner_mark(s))
                     for s in syns], dtype=np.int64)
    codes = plain_codes(fl, rows["payload_len"].astype(np.int64), rows["ack"].astype(np.int64),
                        rows["seq"].astype(np.int64), heads, run_of, lens, scan, 10)
    for i in np.nonzero(served)[0].tolist():
        assert verdict(int(codes[i])) == classify(pkts[i], 10, EV)


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
    assert "could not be classified" in caplog.text
    assert unpack_key(good[0].pkey)[1] == 1000
