"""Sampling and the edge gate: who is kept, how many packets, and what it costs."""

from __future__ import annotations

import math

from builders import ISN, T0, ack, psh, spaced, syn

from rstscope.direction import Direction
from rstscope.packet import TH_ACK, TH_SYN
from rstscope.sampling import Gate, Sampler


def keys(n: int) -> list[tuple[bytes, int, bytes, int]]:
    return [(bytes([10, 1, (i >> 8) & 255, i & 255]), 1024 + i % 50000, bytes([10, 0, 0, 2]), 443) for i in range(n)]


def test_hash_sampling_is_the_same_on_every_host():
    a = Sampler(0.1, "hash", "shared-key")
    b = Sampler(0.1, "hash", "shared-key")
    ks = keys(5000)
    assert [a.keep(k) for k in ks] == [b.keep(k) for k in ks]


def test_hash_sampling_is_direction_independent():
    s = Sampler(0.5, "hash", "k")
    for k in keys(200):
        assert s.keep(k) == s.keep((k[2], k[3], k[0], k[1]))


def test_random_sampling_rate_within_binomial_bounds():
    n, p = 20000, 0.1
    kept = sum(Sampler(p, "random").keep(k) for k in keys(n))
    sd = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * p) < 5 * sd


def test_random_keys_differ_between_runs():
    ks = keys(2000)
    assert [Sampler(0.5, "random").keep(k) for k in ks] != [Sampler(0.5, "random").keep(k) for k in ks]


def test_gate_keeps_first_ten_packets():
    g = Gate(Direction(), Sampler(1.0))
    packets = spaced([syn(), ack()] + [psh(seq=ISN + 1 + 10 * i) for i in range(12)])
    admitted = [g.admit(p) for p in packets]
    assert admitted == [True] * 10 + [False] * 4
    assert g.counters["beyond_max_packets"] == 4


def test_gate_drops_server_to_client_by_handshake():
    g = Gate(Direction(), Sampler(1.0))
    c = syn()
    synack = c._replace(src=c.dst, dst=c.src, sport=c.dport, dport=c.sport, flags=TH_SYN | TH_ACK)
    data_back = ack()._replace(src=c.dst, dst=c.src, sport=c.dport, dport=c.sport)
    assert [g.admit(p) for p in (c, synack, data_back, ack())] == [True, False, False, True]
    assert g.counters["server_to_client"] == 2


def test_gate_configured_direction():
    g = Gate(Direction(["10.0.0.0/30"], [443]), Sampler(1.0))
    c = syn()
    back = c._replace(src=c.dst, dst=c.src, sport=c.dport, dport=c.sport)
    other = c._replace(dport=22)
    assert [g.admit(p) for p in (c, back, other)] == [True, False, False]
    assert g.counters["other_traffic"] == 1


def test_unsampled_connections_cost_no_state():
    g = Gate(Direction(), Sampler(1e-9, "hash", "k"))
    for i in range(1000):
        for p in spaced([syn(sport=2000 + i), ack(sport=2000 + i)], start=T0 + i * 0.01):
            assert not g.admit(p)
    assert len(g.entries) == 0
    assert g.counters["unsampled"] == 2000


def test_gate_without_syn_counts_no_syn():
    g = Gate(Direction(), Sampler(1.0))
    assert not g.admit(ack())
    assert g.counters["no_syn"] == 1


def test_gate_entry_lives_until_its_window_closes():
    """No inactivity timer: a pause keeps the connection; its window's end ends it at the edge too."""
    g = Gate(Direction(), Sampler(1.0))
    wend = T0 // 900 * 900 + 900
    assert g.admit(syn(ts=T0))
    assert g.admit(ack(ts=T0 + 60))
    assert not g.admit(ack(ts=wend + 1))
    assert g.counters["no_syn"] == 1 and len(g.entries) == 0
