"""The connection table, rule by rule of SPEC section 4 (the blog's method) and of the idle mode.

Each test names the rule it pins; docs/method.md lists them with these test names.
"""

from __future__ import annotations

import dataclasses

import pytest
from builders import ISN, T0, ack, fin, pkt, psh, rst, rstack, spaced, syn

from rstscope import config
from rstscope.config import WindowParams
from rstscope.core.classify import classify
from rstscope.core.table import ConnectionTable, Finished
from rstscope.packet import TH_FIN, TH_SYN

W = WindowParams()  # the defaults: 900 s windows, 10 packets, timeout 10 s, grace 10 s, window mode
IDLE = dataclasses.replace(W, mode="idle", idle_s=3.0)
WINDOW0 = int(T0 // 900 * 900)
WEND = WINDOW0 + 900


def run(packets, end: float | None = None, params: WindowParams = W) -> tuple[list[Finished], ConnectionTable]:
    """A finite input: the packets, then the end of input at ``end`` (default: the last packet)."""
    t = ConnectionTable(params)
    out: list[Finished] = []
    for p in packets:
        out.extend(t.add(p))
    out.extend(t.close(end if end is not None else max(p.ts for p in packets)))
    return out, t


def classified(done: list[Finished]) -> list[Finished]:
    return [f for f in done if f.excluded is None]


def verdict(f: Finished):
    return classify(f.conn.packets)


# -- a connection that ended is always classified -----------------------------------------------------

@pytest.mark.parametrize("ending", [fin, rst, rstack])
def test_ended_connection_is_classified_at_the_end_of_input(ending):
    """Five curl GETs closed with FIN, a capture stopped right after them: 5 connections, not 0."""
    done, t = run(spaced([syn(), ack(), psh(), ending(seq=ISN + 101)]))
    (f,) = done
    assert f.excluded is None and t.counters["incomplete"] == 0


def test_ended_connection_next_to_the_window_cutoff_is_classified():
    done, _ = run(spaced([syn(), ack(), psh(), rst(ISN + 101)], start=WEND - 1.0, step=0.1), end=WEND + 60)
    (f,) = done
    assert f.excluded is None and verdict(f).stage == "post_psh"


def test_tenth_packet_decides_and_later_packets_change_nothing():
    pk = spaced([syn()] + [ack()] * 12)
    done, t = run(pk, end=pk[-1].ts + 60)
    (f,) = done
    assert (f.end, f.excluded, len(f.conn.packets)) == ("max_packets", None, 10)
    assert t.counters["beyond_max_packets"] == 3
    assert verdict(f).stage == "no_match"


# -- a connection that has not ended waits for the cutoff ---------------------------------------------

def test_not_ended_10s_before_the_end_of_input_is_a_timeout():
    done, _ = run([syn(ts=T0), ack(ts=T0 + 0.1)], end=T0 + 10.1)
    (f,) = done
    assert f.excluded is None and verdict(f).tags == ("timeout",) and verdict(f).stage == "post_ack"


def test_not_ended_9s_before_the_end_of_input_is_incomplete():
    done, t = run([syn(ts=T0), ack(ts=T0 + 0.1)], end=T0 + 9.1)
    (f,) = done
    assert f.excluded == "incomplete" and t.counters["incomplete"] == 1


@pytest.mark.parametrize("quiet, excluded", [(10.0, None), (9.0, "incomplete")])
def test_not_ended_against_the_window_end(quiet, excluded):
    """The cutoff is the window's end when the input goes on past it."""
    done, _ = run([syn(ts=WEND - quiet)], end=WEND + 100)
    (f,) = done
    assert (f.end, f.excluded) == ("window_closed", excluded)


def test_a_30s_pause_then_fin_is_one_graceful_connection():
    """No inactivity timer: a client that pauses and then closes is None, not a timeout."""
    pk = [syn(ts=T0), ack(ts=T0 + 0.01), psh(ts=T0 + 0.02), fin(seq=ISN + 101, ts=T0 + 30.02)]
    done, t = run(pk, end=T0 + 60)
    (f,) = done
    assert (f.excluded, len(f.conn.packets)) == (None, 4)
    assert (verdict(f).stage, verdict(f).tags) == ("no_match", ())
    assert t.counters["no_syn"] == 0


def test_a_preconnect_then_fin_a_minute_later_is_not_post_ack():
    pk = [syn(ts=T0), ack(ts=T0 + 0.01), fin(ts=T0 + 60)]
    (f,), _ = run(pk, end=T0 + 120)
    assert (verdict(f).stage, verdict(f).signature) == ("no_match", None)


# -- SYNs ------------------------------------------------------------------------------------------------

def test_syn_retries_with_linux_backoff_are_one_multi_syn_connection():
    pk = [syn(ts=T0 + d) for d in (0, 1, 3, 7, 15, 31)]
    done, t = run(pk, end=T0 + 120)
    (f,) = done
    assert f.excluded == "multi_syn" and len(f.conn.packets) == 6
    assert t.counters["multi_syn"] == 1 and t.counters["incomplete"] == 0


def test_syn_retries_in_idle_mode_are_absorbed_not_new_timeouts():
    pk = [syn(ts=T0 + d) for d in (0, 1, 3, 7, 15, 31)]
    done, t = run(pk, end=T0 + 120, params=IDLE)
    (f,) = done  # 0, 1, 3 (multi_syn), then quiet for 4 s: decided; 7, 15, 31 absorbed
    assert (f.end, f.excluded, len(f.conn.packets)) == ("idle", "multi_syn", 3)
    assert t.counters["after_idle"] == 3


def test_new_isn_on_a_connection_that_has_not_ended_stays_in_it():
    pk = spaced([syn(), ack(), syn(seq=ISN + 77777), ack()])
    done, t = run(pk, end=T0 + 60)
    (f,) = done
    assert (f.excluded, len(f.conn.packets), f.conn.syns) == ("multi_syn", 4, 2)


def test_port_reused_after_a_fin_in_the_same_window_is_a_new_connection():
    first = spaced([syn(), ack(), psh(), fin(seq=ISN + 101)])
    second = spaced([syn(seq=ISN + 50000), ack(seq=ISN + 50001), rst(seq=ISN + 50001)], start=T0 + 2)
    done, t = run(first + second, end=T0 + 60)
    a, b = classified(done)
    assert (a.end, verdict(a).stage) == ("reused", "no_match")
    assert verdict(b).stage == "post_ack" and t.counters["multi_syn"] == 0


def test_port_reused_after_the_grace_period():
    first = spaced([syn(), ack(), rst()])
    second = spaced([syn(seq=ISN + 50000), ack(seq=ISN + 50001), rst(seq=ISN + 50001)], start=T0 + 30)
    done, _ = run(first + second, end=T0 + 60)
    assert [f.end for f in classified(done)] == ["grace", "grace"]


def test_syn_with_the_same_isn_after_the_connection_was_decided_is_absorbed():
    pk = spaced([syn(), rst()]) + [syn(ts=T0 + 20)]
    done, t = run(pk, end=T0 + 60)
    assert len(done) == 1 and t.counters["after_close"] == 1


def test_syn_fin_has_ended_already():
    done, _ = run([pkt(TH_SYN | TH_FIN, seq=ISN, ack=0, ts=T0)], end=T0 + 1)
    (f,) = done
    assert f.excluded is None and f.conn.ended


# -- the grace period and the watermark --------------------------------------------------------------

def test_rsts_within_the_grace_period_are_collected():
    pk = spaced([syn(), ack(), psh(), rst(ISN + 101)]) + [rst(ISN + 102, ts=T0 + 5)]
    (f,), _ = run(pk, end=T0 + 60)
    assert verdict(f).tags == ("reset", "multiple_rsts", "acknumdiff")


def test_packets_after_the_grace_period_are_after_close():
    pk = spaced([syn(), ack(), psh(), rst(ISN + 101)]) + [rst(ISN + 102, ts=T0 + 12)]
    (f,), t = run(pk, end=T0 + 60)
    assert verdict(f).tags == ("reset", "single_rst") and t.counters["after_close"] == 1


def test_streaming_emits_an_ended_connection_once_the_watermark_passes_its_grace():
    t = ConnectionTable(W)
    for p in spaced([syn(), ack(), rst()]):
        assert t.add(p) == []
    assert t.advance(T0 + 9.0) == []  # still collecting RSTs
    (f,) = t.advance(T0 + 10.03)
    assert (f.end, f.excluded) == ("grace", None)


def test_streaming_holds_a_connection_that_has_not_ended_until_its_window_closes():
    t = ConnectionTable(W)
    t.add(syn(ts=T0))
    t.add(ack(ts=T0 + 0.1))
    assert t.advance(WEND - 0.001) == []
    (f,) = t.advance(WEND)
    assert (f.end, f.excluded) == ("window_closed", None) and verdict(f).stage == "post_ack"


# -- windows -------------------------------------------------------------------------------------------

def test_packets_after_their_connections_window_ended_are_no_syn():
    pk = [syn(ts=WEND - 30), ack(ts=WEND - 29.9), psh(ts=WEND + 1), fin(seq=ISN + 101, ts=WEND + 2)]
    done, t = run(pk, end=WEND + 60)
    (f,) = done
    assert (f.end, len(f.conn.packets)) == ("window_closed", 2)
    assert verdict(f).stage == "post_ack" and t.counters["no_syn"] == 2


def test_late_packets_are_counted():
    t = ConnectionTable(W)
    t.add(syn(ts=WEND + 5))
    assert t.add(syn(ts=WEND - 5, sport=40001)) == []
    assert t.counters["late"] == 1


def test_packet_without_syn_is_no_syn():
    _, t = run(spaced([ack(), psh()]), end=T0 + 60)
    assert t.counters["no_syn"] == 2


# -- idle mode -----------------------------------------------------------------------------------------

def test_idle_mode_quiet_connection_is_a_timeout_at_once():
    t = ConnectionTable(IDLE)
    t.add(syn(ts=T0))
    t.add(ack(ts=T0 + 0.1))
    (f,) = t.advance(T0 + 3.1)
    assert (f.end, f.excluded) == ("idle", None) and verdict(f).stage == "post_ack"
    assert t.add(fin(ts=T0 + 30)) == [] and t.counters["after_idle"] == 1


def test_idle_mode_never_times_out_past_its_windows_end():
    done, _ = run([syn(ts=WEND - 2)], end=WEND + 60, params=IDLE)
    (f,) = done
    assert (f.end, f.excluded) == ("window_closed", "incomplete")


# -- topology ------------------------------------------------------------------------------------------

def test_old_topology_keys_say_what_replaced_them(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("window:\n  idle_timeout_s: 3\n")
    with pytest.raises(config.TopologyError, match="replaced by"):
        config.load(p)


def test_unknown_mode_is_refused(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("window:\n  mode: lazy\n")
    with pytest.raises(config.TopologyError, match=r"window\.mode"):
        config.load(p)


