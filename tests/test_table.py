"""The connection table over event time: windows, idle timeouts, reuse, multi-SYN, incomplete flows."""

from __future__ import annotations

from builders import ISN, T0, ack, fin, psh, rst, rstack, spaced, syn

from rstscope.config import WindowParams
from rstscope.core.classify import classify
from rstscope.core.table import ConnectionTable, Finished

W = WindowParams(size_s=900, idle_timeout_s=10, cutoff_margin_s=10, max_packets=10)
WINDOW0 = int(T0 // 900 * 900)


def run(packets, end: float | None = None, params: WindowParams = W) -> tuple[list[Finished], ConnectionTable]:
    t = ConnectionTable(params)
    out: list[Finished] = []
    for p in packets:
        out.extend(t.add(p))
    if end is not None:
        out.extend(t.advance(end))
    out.extend(t.close())
    return out, t


def classified(done: list[Finished]) -> list[Finished]:
    return [f for f in done if f.excluded is None]


def test_idle_connection_times_out_and_is_classified():
    done, t = run(spaced([syn(), ack()]), end=T0 + 30)
    (f,) = done
    assert (f.end, f.excluded) == ("idle", None)
    assert classify(f.conn.packets).stage == "post_ack"


def test_connection_within_margin_of_end_of_input_is_incomplete():
    done, t = run(spaced([syn(), ack()]), end=T0 + 5)
    (f,) = done
    assert f.excluded == "incomplete"
    assert t.counters["incomplete"] == 1


def test_reset_connection_still_waits_for_more_rsts():
    done, _ = run(spaced([syn(), ack(), psh(), rst(5)]) + [rst(6, ts=T0 + 1)], end=T0 + 20)
    (f,) = classified(done)
    assert classify(f.conn.packets).tags == ("reset", "multiple_rsts", "acknumdiff")


def test_max_packets_finalizes_at_the_tenth_and_later_packets_change_nothing():
    packets = spaced([syn(), ack()] + [psh(seq=ISN + 1 + 100 * i) for i in range(8)] + [rst(1), rst(2)])
    done, t = run(packets, end=T0 + 60)
    (f,) = classified(done)
    assert f.end == "max_packets" and len(f.conn.packets) == 10
    assert classify(f.conn.packets).stage == "no_match"
    assert t.counters["after_close"] == 2


def test_syn_retransmission_excludes_connection_as_multi_syn():
    done, t = run([syn(ts=T0), syn(ts=T0 + 1), syn(ts=T0 + 3)], end=T0 + 30)
    (f,) = done
    assert f.excluded == "multi_syn"
    assert t.counters["multi_syn"] == 1


def test_reused_tuple_after_rst_starts_a_new_connection():
    first = spaced([syn(), ack(), rstack()])
    second = spaced([syn(seq=ISN + 777_777), ack(seq=ISN + 777_778)], start=T0 + 2)
    done, _ = run(first + second, end=T0 + 40)
    got = classified(done)
    assert [f.end for f in got] == ["reused", "idle"]
    assert [classify(f.conn.packets).stage for f in got] == ["post_ack", "post_ack"]
    assert [len(f.conn.packets) for f in got] == [3, 2]


def test_reused_tuple_after_fin_starts_a_new_connection():
    first = spaced([syn(), ack(), psh(), fin(seq=ISN + 101)])
    second = spaced([syn(seq=ISN + 5_000_000)], start=T0 + 1)
    done, _ = run(first + second, end=T0 + 40)
    assert [f.end for f in classified(done)] == ["reused", "idle"]


def test_new_isn_while_old_connection_is_open_supersedes_it():
    done, t = run(spaced([syn(), ack(), syn(seq=ISN + 99_999)]), end=T0 + 40)
    assert [f.excluded for f in done] == ["superseded", None]
    assert t.counters["superseded"] == 1


def test_same_isn_after_finalization_is_absorbed():
    packets = spaced([syn(), ack()] + [psh(seq=ISN + 1 + 100 * i) for i in range(8)] + [syn()])
    done, t = run(packets, end=T0 + 60)
    assert len(done) == 1 and t.counters["after_close"] == 1


def test_packets_without_syn_are_counted_not_classified():
    done, t = run(spaced([ack(), psh()]), end=T0 + 60)
    assert done == [] and t.counters["no_syn"] == 2


def test_window_cutoff_splits_and_marks_incomplete():
    near_end = WINDOW0 + 900 - 3
    packets = [syn(ts=near_end), ack(ts=near_end + 0.1), psh(ts=WINDOW0 + 900 + 1)]
    done, t = run(packets, end=WINDOW0 + 1000)
    assert [f.excluded for f in done] == ["incomplete"]
    assert t.counters["no_syn"] == 1  # the packet in the next window has no SYN there


def test_idle_expiry_within_margin_of_cutoff_is_incomplete_with_short_idle():
    params = WindowParams(size_s=900, idle_timeout_s=3, cutoff_margin_s=10, max_packets=10)
    packets = [syn(ts=WINDOW0 + 900 - 8)]
    done, _ = run(packets, end=WINDOW0 + 900 - 1, params=params)
    assert [f.excluded for f in done] == ["incomplete"]


def test_idle_timeout_is_configurable():
    params = WindowParams(size_s=900, idle_timeout_s=3, cutoff_margin_s=3, max_packets=10)
    done, _ = run(spaced([syn(), ack()]), end=T0 + 4, params=params)
    (f,) = done
    assert (f.end, f.excluded) == ("idle", None)


def test_gap_longer_than_idle_ends_the_connection_even_without_a_watermark_sweep():
    # Out-of-order arrival can hide a connection from the sweep; the per-packet check still holds.
    t = ConnectionTable(W)
    t.add(syn(ts=T0))
    t.add(ack(ts=T0 + 0.5))
    done = t.add(psh(ts=T0 + 11))
    assert [f.end for f in done] == ["idle"]
    assert t.counters["no_syn"] == 1


def test_late_packet_of_closed_window_is_counted():
    t = ConnectionTable(W)
    t.add(syn(ts=WINDOW0 + 950, sport=1))
    t.add(syn(ts=WINDOW0 + 10, sport=2))
    assert t.counters["late"] == 1


def test_many_connections_on_distinct_ports():
    packets = []
    for i in range(50):
        packets += spaced([syn(sport=20000 + i), ack(sport=20000 + i)], start=T0 + i * 0.1)
    packets.sort(key=lambda p: p.ts)
    done, _ = run(packets, end=T0 + 100)
    assert len(classified(done)) == 50
