"""The gate over columns (``fastpath.gate.take_columns``) answers as ``Gate.take`` packet after packet.

Random packet streams on a few tuples (both directions, so learnt direction matters; SYNs with old
and new sequence numbers, RSTs, FINs, gaps around grace_s and idle_s, time going backwards across
window boundaries) are fed to one gate packet by packet and to another in random slices; every
answer, every counter, the table of connections and the clock must agree after each slice. Also
the column forms the gate relies on: ``core.table.plain_join`` is ``step``'s JOIN, and
``Sampler.keep_packed`` is ``Sampler.keep``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rstscope.config import WindowParams
from rstscope.core.table import Step, Track, ended_reopens, is_syn, plain_join, step, window_of
from rstscope.direction import Direction
from rstscope.fastpath.gate import take_columns
from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, pack_key
from rstscope.sampling import Gate, Sampler

PARAMS = (
    WindowParams(size_s=60, timeout_s=10, grace_s=2.0, max_packets=4),
    WindowParams(size_s=60, timeout_s=5, grace_s=2.5, max_packets=10, mode="idle", idle_s=3),
    WindowParams(size_s=900, timeout_s=0.0, grace_s=1.0, max_packets=1),
)
ENDS = ((b"\x0a\x00\x00\x01", 40000), (b"\x0a\x00\x00\x01", 40001), (b"\x0a\x00\x00\x02", 443))
FLAGS = (TH_SYN, TH_SYN, TH_ACK, TH_ACK, TH_PSH | TH_ACK, TH_PSH | TH_ACK, TH_FIN | TH_ACK, TH_RST,
         TH_RST | TH_ACK, TH_SYN | TH_ACK, TH_SYN | TH_FIN)


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[bytes, float, int, int]]:
    n = draw(st.integers(1, 80))
    t = 59.0 * draw(st.integers(0, 2)) + draw(st.sampled_from((0.0, 50.0)))
    ends = draw(st.sampled_from((ENDS, ENDS[1:])))  # few tuples: long runs of one connection's packets
    out = []
    for _ in range(n):
        t = round(t + draw(st.sampled_from((0.0, 0.001, 0.001, 0.5, 1.0, 2.0, 2.5, 3.0, 10.0, 61.0, -0.5, -20.0))), 6)
        a = draw(st.sampled_from(ends))
        b = ends[-1] if a != ends[-1] and draw(st.integers(0, 3)) else draw(st.sampled_from(ends))
        out.append((pack_key(a[0], a[1], b[0], b[1]), t, draw(st.sampled_from(FLAGS)),
                    draw(st.sampled_from((1000, 1000, 2000)))))
    return out


def _state(g: Gate) -> tuple[object, ...]:
    return (dict(g.counters), {k: asdict(e) for k, e in g.entries.items()}, g.watermark, g.current_window)


def _compare(packets: list[tuple[bytes, float, int, int]], cuts: list[int], params: WindowParams, unknown: bool,
             probability: float = 1.0) -> None:
    """Both gates over ``packets`` (the columns in slices of ``cuts`` sizes, in turn): the same after each."""
    sampler = Sampler(probability, "hash", "k")
    one, cols = Gate(Direction(), sampler, params), Gate(Direction(), sampler, params)
    i = 0
    while i < len(packets):
        part = packets[i:i + cuts[i % len(cuts)]]
        i += len(part)
        want = [one.take(k, t, f, s, int(window_of(t, params.size_s)), unknown) for k, t, f, s in part]
        ts = np.array([t for _k, t, _f, _s in part])
        got = take_columns(cols, [k for k, *_ in part], ts, np.array([f for _k, _t, f, _s in part]),
                           np.array([s for *_x, s in part], dtype=np.int64),
                           window_of(ts, params.size_s).astype(np.int64), unknown)
        assert got.tolist() == want
        assert _state(cols) == _state(one)


@settings(max_examples=400, deadline=None)
@given(streams(), st.lists(st.integers(1, 30), min_size=1, max_size=8), st.sampled_from(range(len(PARAMS))),
       st.booleans(), st.sampled_from((1.0, 0.5)))
def test_columns_answer_as_packet_after_packet(packets: list[tuple[bytes, float, int, int]], cuts: list[int],
                                               p: int, unknown: bool, probability: float) -> None:
    _compare(packets, cuts, PARAMS[p], unknown, probability)


C, S = pack_key(*ENDS[0], *ENDS[2]), pack_key(*ENDS[2], *ENDS[0])  # a client's tuple and its reverse
SCRIPTS = (
    [(C, 0.0, TH_SYN, 1000), (C, 0.1, TH_RST, 1001), (C, 0.2, TH_SYN, 2000)],  # port reused after an RST
    [(C, 0.0, TH_SYN, 1000), (C, 0.1, TH_FIN | TH_ACK, 1001), (C, 5.0, TH_ACK, 1002)],  # after the grace
    [(C, 0.0, TH_SYN, 1000)] + [(C, 0.1 * i, TH_ACK, 1001) for i in range(1, 6)],  # past max_packets
    [(C, 0.0, TH_SYN, 1000), (S, 0.1, TH_ACK, 7000), (C, 0.2, TH_ACK, 1001)],  # the server's answer, learnt
    [(S, 0.0, TH_ACK, 7000), (C, 0.1, TH_SYN, 1000), (S, 0.2, TH_ACK, 7000)],  # ... and before the SYN, not
)


def test_scripts() -> None:
    for script in SCRIPTS:
        for p in PARAMS:
            for cuts in ([1], [2], [len(script)]):
                _compare(script, cuts, p, unknown=True)
                _compare(script, cuts, p, unknown=False)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(PARAMS))), st.booleans(), st.sampled_from((0.0, 0.5, 1.0, 2.5, 2.9999, 3.0, 9.0)),
       st.sampled_from(FLAGS[2:9]))
def test_plain_join_is_steps_join(p: int, ended: bool, gap: float, flags: int) -> None:
    params = PARAMS[p]
    st_ = Track(0, 1000, 10.0, 2, ended)
    o = step(st_, 10.0 + gap, flags, 1000, 0, params)
    assert bool(plain_join(gap, ended, params)) == (o.step is Step.JOIN)
    assert plain_join(np.array([gap]), np.array([ended]), params).tolist() == [o.step is Step.JOIN]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(PARAMS))), st.sampled_from(("", "max_packets", "grace", "idle")),
       st.sampled_from((0, 900)), st.sampled_from((999, 1000)), st.sampled_from((0.0, 1.0, 2.9999, 3.0, 9.0, 400.0)),
       st.sampled_from(FLAGS))
def test_ended_reopens_is_steps_finish_open(p: int, sealed: str, window: int, seq: int, gap: float,
                                            flags: int) -> None:
    """The column form the batch engine uses for carried connections that ended: ``step`` on the same
    state and packet finishes and reopens exactly when it says so."""
    params = PARAMS[p]
    st_ = Track(0, 1000, 10.0, 2, True, sealed)
    o = step(st_, 10.0 + gap, flags, seq, window, params)
    new_isn = bool(is_syn(flags)) and seq != 1000
    assert bool(ended_reopens(window == 0, bool(sealed), new_isn)) == (o.step is Step.FINISH_OPEN)
    got = ended_reopens(np.array([window == 0]), np.array([bool(sealed)]), np.array([new_isn]))
    assert got.tolist() == [o.step is Step.FINISH_OPEN]


def test_keep_packed_is_the_keyed_hash_of_the_ordered_endpoints() -> None:
    s = Sampler(0.5, "hash", "k")
    for a in ENDS:
        for b in ENDS + ((b"\x0a\x00\x00\x00", 65535),):
            key = (a[0], a[1], b[0], b[1])
            lo, hi = sorted([(a[0], a[1]), (b[0], b[1])])
            data = lo[0] + lo[1].to_bytes(2, "big") + hi[0] + hi[1].to_bytes(2, "big")
            h = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=b"k").digest(), "big")
            assert s.keep(key) == s.keep_packed(pack_key(*key)) == (h < int(0.5 * 2.0**64))
