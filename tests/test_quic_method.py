"""The QUIC method (docs/quic.md): each rule on synthetic packet records, and the QUIC test bed's capture
classified as it was made (tests/fixtures/quic_bed.pcap, labels in tests/quicbed/quic_bed.labels.jsonl)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from rstscope.config import Topology, WindowParams
from rstscope.core.table import exclusion, timed_out
from rstscope.decode.quic import QUIC_VERSION_1, QUIC_VERSION_2
from rstscope.packet import ip_text
from rstscope.quic.classify import flights_of, level_of, rtt_of, verdict
from rstscope.quic.offline import classify_files, records_of, run_files
from rstscope.quic.packet import BY_ATTEMPT, BY_OWN_DCID, QuicPacketRecord, dcid_tag
from rstscope.quic.record import sni_value
from rstscope.quic.table import (
    AFTER_CLOSE,
    BEYOND_MAX,
    END_CAP,
    END_CLOSE,
    END_CUTOFF,
    END_RESTART,
    NO_INITIAL,
    QuicFinished,
    QuicTable,
)

ROOT = Path(__file__).resolve().parent
PCAP = ROOT / "fixtures" / "quic_bed.pcap"
LABELS = ROOT / "quicbed" / "quic_bed.labels.jsonl"
SERVERS = ("10.78.2.2", "10.78.2.3", "fd78:2::2", "fd78:2::3")

CLI = bytes((10, 0, 0, 1))
SRV = bytes((10, 0, 0, 2))
T0 = 1_800_000_000.0  # a window start (divisible by 900)
ODCID = bytes.fromhex("0011223344556677")


def pk(ts: float, ptype: str = "initial", *, sport: int = 5555, version: int | None = QUIC_VERSION_1,
       dcid: bytes = ODCID, token: bool = False, decrypted: str = "", hello: bool = False,
       close: bool = False) -> QuicPacketRecord:
    if ptype == "one_rtt":
        version = None
    return QuicPacketRecord(ts, 4, CLI, SRV, sport, 443, ptype, version, dcid, 1200, 64, 1, token,
                            decrypted, hello, close)


def hello(ts: float, **kw: object) -> QuicPacketRecord:
    """A client Initial that starts a ClientHello and decrypts with its own DCID's keys: an opener."""
    return pk(ts, "initial", decrypted=BY_OWN_DCID, hello=True, **kw)  # type: ignore[arg-type]


def again(ts: float) -> QuicPacketRecord:
    """The same ClientHello again (decrypted with the attempt's keys)."""
    return pk(ts, "initial", decrypted=BY_ATTEMPT, hello=True)


def run(datagrams: list[list[QuicPacketRecord]], end: float | None = None,
        params: WindowParams | None = None) -> tuple[list[QuicFinished], QuicTable]:
    t = QuicTable(params or WindowParams())
    out: list[QuicFinished] = []
    for d in datagrams:
        out.extend(t.add(d))
    out.extend(t.close(end if end is not None else max(d[0].ts for d in datagrams)))
    return out, t


Verdict = tuple[str, tuple[str, ...]]


def one(datagrams: list[list[QuicPacketRecord]], end: float | None = None) -> tuple[QuicFinished, Verdict]:
    out, _ = run(datagrams, end)
    assert len(out) == 1
    f = out[0]
    v = verdict(f.attempt.packets, f.end, f.attempt.tag)
    return f, (v.stage, v.tags)


# -- rtt, flights, level ------------------------------------------------------------------------

def test_rtt_is_first_handshake_minus_first_initial():
    pkts = [hello(T0), pk(T0 + 0.020, "initial"), pk(T0 + 0.020, "handshake")]
    assert rtt_of(pkts) == pytest.approx(0.020)
    assert rtt_of([hello(T0), again(T0 + 0.3)]) is None


def test_coalesced_1rtt_behind_the_finished_is_one_flight_and_a_later_burst_another():
    rtt = 0.010  # gap = 5 ms
    pkts = [hello(T0), pk(T0 + rtt, "initial"), pk(T0 + rtt, "handshake"), pk(T0 + rtt, "one_rtt")]
    assert flights_of(pkts, rtt_of(pkts)) == 1 and level_of(pkts, 1) == 2
    pkts.append(pk(T0 + rtt + 0.0049, "one_rtt"))  # under half an rtt after the previous: same flight
    assert flights_of(pkts, rtt_of(pkts)) == 1
    pkts.append(pk(T0 + rtt + 0.0049 + 0.0051, "one_rtt"))  # half an rtt after it: a new flight
    assert flights_of(pkts, rtt_of(pkts)) == 2 and level_of(pkts, 2) == 3


def test_the_flight_gap_has_a_1ms_floor():
    rtt = 0.0004
    pkts = [hello(T0), pk(T0 + rtt, "handshake"), pk(T0 + rtt, "one_rtt"), pk(T0 + rtt + 0.0009, "one_rtt")]
    assert flights_of(pkts, rtt_of(pkts)) == 1
    pkts.append(pk(T0 + rtt + 0.0009 + 0.0011, "one_rtt"))  # (float time: a hair over 1 ms)
    assert flights_of(pkts, rtt_of(pkts)) == 2


def test_levels():
    assert level_of([hello(T0), again(T0 + 1)], 0) == 0
    assert level_of([hello(T0), pk(T0 + 0.01, "zero_rtt")], 0) == 0  # 0-RTT is sent before the server answers
    assert level_of([hello(T0), pk(T0 + 0.01, "handshake")], 0) == 1


# -- stages and tags per end -----------------------------------------------------------------------

def test_timeouts_by_level():
    f, v = one([[hello(T0)]], end=T0 + 30)
    assert (f.end, f.excluded, v) == (END_CUTOFF, None, ("post_syn", ("timeout",)))
    _, v = one([[hello(T0)], [pk(T0 + .01, "initial"), pk(T0 + .01, "handshake")]], end=T0 + 30)
    assert v == ("post_ack", ("timeout",))
    _, v = one([[hello(T0)], [pk(T0 + .01, "handshake"), pk(T0 + .01, "one_rtt")]], end=T0 + 30)
    assert v == ("post_psh", ("timeout",))
    _, v = one([[hello(T0)], [pk(T0 + .01, "handshake"), pk(T0 + .01, "one_rtt")], [pk(T0 + .05, "one_rtt")]],
               end=T0 + 30)
    assert v == ("no_match", ("timeout",))


def test_repeated_client_hello_without_progress_is_initial_repeat():
    _, v = one([[hello(T0)], [again(T0 + 0.3)], [again(T0 + 0.9)]], end=T0 + 30)
    assert v == ("post_syn", ("timeout", "initial_repeat"))
    # with progress it is not tagged
    _, v = one([[hello(T0)], [again(T0 + 0.3)], [pk(T0 + 0.5, "handshake")]], end=T0 + 30)
    assert v == ("post_ack", ("timeout",))


def test_client_close_in_an_initial_ends_at_once_and_later_datagrams_are_after_close():
    out, t = run([[hello(T0)], [pk(T0 + 0.01, "initial", decrypted=BY_ATTEMPT, close=True)],
                  [again(T0 + 0.02)]], end=T0 + 1)  # 1 s: the cutoff does not matter to an ended attempt
    assert len(out) == 1 and out[0].end == END_CLOSE and out[0].excluded is None
    assert verdict(out[0].attempt.packets, END_CLOSE).stage == "post_syn"
    assert verdict(out[0].attempt.packets, END_CLOSE).tags == ("client_close",)
    assert t.counters[AFTER_CLOSE] == 1


def test_the_max_packets_th_datagram_decides_with_no_tag():
    dgs = [[hello(T0)], [pk(T0 + .01, "handshake"), pk(T0 + .01, "one_rtt")]]
    dgs += [[pk(T0 + 0.1 * i, "one_rtt")] for i in range(1, 9)]  # 10 datagrams
    dgs.append([pk(T0 + 1.5, "one_rtt")])
    out, t = run(dgs, end=T0 + 2)
    assert len(out) == 1 and out[0].end == END_CAP and out[0].attempt.datagrams == 10
    v = verdict(out[0].attempt.packets, END_CAP)
    assert (v.stage, v.tags) == ("no_match", ())
    assert t.counters[BEYOND_MAX] == 1


@pytest.mark.parametrize(("opener", "tag"), [
    (hello(T0 + 0.2, version=QUIC_VERSION_2, dcid=b"\x01" * 8), "vn_restart"),
    (hello(T0 + 0.2, token=True, dcid=b"\x02" * 8), "retry_restart"),
    (hello(T0 + 0.2, dcid=b"\x03" * 8), "restart"),
])
def test_restart_kinds(opener: QuicPacketRecord, tag: str):
    out, _ = run([[hello(T0)], [opener]], end=T0 + 30)
    first, second = out
    assert first.end == END_RESTART and first.excluded is None
    v = verdict(first.attempt.packets, first.end, first.attempt.tag)
    assert (v.stage, v.tags) == ("no_match", (tag,))
    assert second.attempt.odcid == opener.dcid and second.end == END_CUTOFF


def test_unknown_version_opens_an_attempt_and_its_repeat_joins_it():
    out, _ = run([[pk(T0, "unknown", version=0x1A2A3A4A)], [pk(T0 + 0.3, "unknown", version=0x1A2A3A4A)],
                  [hello(T0 + 0.5)]], end=T0 + 30)
    assert [f.end for f in out] == [END_RESTART, END_CUTOFF]
    assert out[0].attempt.datagrams == 2 and out[0].attempt.tag == "vn_restart"


def test_an_initial_the_attempts_keys_decrypt_is_never_a_new_attempt():
    out, _ = run([[hello(T0)], [again(T0 + 0.3)]], end=T0 + 30)
    assert len(out) == 1 and out[0].attempt.hellos == 2


def test_packets_before_an_opening_initial_are_no_initial():
    out, t = run([[pk(T0, "one_rtt")], [pk(T0 + .1, "handshake")], [pk(T0 + .2, "initial", decrypted=BY_OWN_DCID)],
                  [hello(T0 + 1)]], end=T0 + 30)
    assert t.counters[NO_INITIAL] == 3 and len(out) == 1 and out[0].attempt.datagrams == 1


def test_the_cutoff_is_the_cores_rule():
    params = WindowParams()
    for quiet in (9.0, 9.999, 10.0, 11.0):
        out, t = run([[hello(T0)]], end=T0 + quiet)
        want = exclusion(1, False, T0, T0 + quiet, params)
        assert out[0].excluded == want
        assert (want is None) == bool(timed_out(T0, T0 + quiet, params))
        assert t.counters["incomplete"] == (1 if want else 0)
    assert run([[hello(T0)]], end=T0 + 9.0)[0][0].excluded == "incomplete"
    assert run([[hello(T0)]], end=T0 + 10.0)[0][0].excluded is None


def test_the_window_end_is_the_cutoff_and_the_next_window_needs_a_new_initial():
    start = T0 + 900 - 5  # 5 s before the window ends
    out, t = run([[hello(start)], [pk(start + 6, "handshake")], [hello(start + 20, dcid=b"\x09" * 8)]],
                 end=start + 40)
    first, second = out
    assert first.cutoff == T0 + 900 and first.excluded == "incomplete"  # 5 s before its window's end
    assert t.counters[NO_INITIAL] == 1  # the Handshake packet in the next window
    assert second.attempt.window_start == T0 + 900 and second.excluded is None
    out, _ = run([[hello(T0 + 900 - 15)]], end=T0 + 1000)
    assert out[0].cutoff == T0 + 900 and out[0].excluded is None


def test_max_packets_and_timeout_come_from_the_topology():
    params = WindowParams(max_packets=3, timeout_s=2.0)
    out, _ = run([[hello(T0)], [again(T0 + 1)], [again(T0 + 2)]], end=T0 + 3, params=params)
    assert out[0].end == END_CAP
    out, _ = run([[hello(T0)]], end=T0 + 2, params=params)
    assert out[0].excluded is None


def test_sni_policies():
    assert sni_value("Blocked.Example", "keep") == "Blocked.Example"
    assert sni_value("Blocked.Example", "hash") == hashlib.sha256(b"blocked.example").hexdigest()[:16]
    assert sni_value("Blocked.Example") == sni_value("blocked.example")
    assert sni_value("blocked.example", "none") is None and sni_value(None, "keep") is None
    with pytest.raises(ValueError):
        sni_value("x", "truncate")


# -- the QUIC test bed ----------------------------------------------------------------------------

EXPECTED = {  # scenario (treated connections) -> (stage, tags)
    "sni_drop": ("post_syn", ("timeout",)),
    "v6_sni_drop": ("post_syn", ("timeout",)),
    "udp_drop_after_first": ("post_syn", ("timeout",)),
    "sni_drop_return": ("post_syn", ("timeout", "initial_repeat")),
    "drop_after_handshake": ("post_ack", ("timeout",)),
    "drop_after_handshake_coalesced": ("post_psh", ("timeout",)),
}


def expected(label: dict[str, object]) -> list[tuple[str, tuple[str, ...]]]:
    """What each attempt of a labelled connection must be classified as, in order."""
    if label["done"] == "vn_restart":
        return [("no_match", ("vn_restart",)), ("no_match", ("timeout",))]
    if label["done"] == "client_close_initial":
        return [("post_syn", ("client_close",))]
    if label["done"] == "client_close_handshake":
        return [("post_ack", ("client_close",))]  # the server got its Handshake packet too
    if not label["treated"] or label["scenario"] in ("completed", "v6_completed"):
        return [("no_match", ("timeout",))]  # closed inside 1-RTT: invisible (or no tag at the cap)
    return [EXPECTED[str(label["scenario"])]]


@pytest.fixture(scope="module")
def bed() -> tuple[list[QuicFinished], Counter[str], list[dict[str, object]]]:
    finished, counters = run_files([PCAP], SERVERS, (443,))
    labels = [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()]
    for lab in labels:  # the edge sends the original DCID's tag, never the DCID: labels join on the tag
        lab["odcid"] = dcid_tag(bytes.fromhex(str(lab["odcid"]))).hex()
    return finished, counters, labels


def test_the_quic_bed_is_classified_as_it_was_made(bed):
    finished, counters, labels = bed
    end_of_input = max(f.cutoff for f in finished if f.end == END_CUTOFF)  # the capture's last frame
    by_label: dict[tuple[str, int, str], list[QuicFinished]] = defaultdict(list)
    for f in sorted(finished, key=lambda f: f.attempt.first_ts):
        a = f.attempt
        by_label[(ip_text(a.key[0]), a.key[1], a.odcid.hex())].append(f)
    keys = {(lab["client_ip"], lab["client_port"], lab["odcid"]) for lab in labels}
    assert set(by_label) == keys, "every attempt belongs to a labelled connection and every label has one"
    table: dict[str, Counter[str]] = defaultdict(Counter)
    wrong = []
    for lab in labels:
        got_f = by_label[(lab["client_ip"], lab["client_port"], lab["odcid"])]
        want = expected(lab)
        if got_f[0].excluded:
            # the core's cutoff rule: not ended and quiet < timeout_s before the end of the input
            assert lab["scenario"] == "ordinary_tail" and got_f[0].excluded == "incomplete"
            assert got_f[0].cutoff - got_f[0].attempt.last_ts < 10 and got_f[0].cutoff == end_of_input
            table[lab["scenario"]]["incomplete"] += 1
            continue
        got = [(v.stage, v.tags) for v in (verdict(f.attempt.packets, f.end, f.attempt.tag) for f in got_f)]
        if lab["scenario"] in ("completed", "v6_completed") or not lab["treated"]:
            got = [(s, t) if t else (s, ("timeout",)) for s, t in got]  # the cap (no tag) is as good
        table[lab["scenario"]]["ok" if got == want else "WRONG"] += 1
        if got != want:
            wrong.append((lab["scenario"], lab["client_port"], got, want))
    print("\nscenario                         ok  wrong  incomplete")
    for sc, c in table.items():
        print(f"{sc:32s} {c['ok']:3d} {c['WRONG']:5d} {c['incomplete']:6d}")
    assert not wrong
    classified = sum(c["ok"] for c in table.values())
    assert classified == len(labels) - sum(c["incomplete"] for c in table.values())
    # every treated connection (the measurement's subject) was classified: precision and recall 1.0
    assert all(c["incomplete"] == 0 for sc, c in table.items() if sc != "ordinary_tail")
    assert counters["frames"] == counters["datagrams_used"] + sum(n for k, n in counters.items()
                                                                   if k.startswith("dropped."))


def test_the_bed_tail_that_is_incomplete_is_what_the_cores_rule_says(bed):
    finished, _, _ = bed
    end = max(f.attempt.last_ts for f in finished)
    for f in finished:
        if f.end == END_CUTOFF:
            assert f.excluded == exclusion(1, False, f.attempt.last_ts, f.cutoff, WindowParams())
            assert f.cutoff <= end + 1e-6


def test_the_bed_sni_with_policy_keep(bed):
    _, _, labels = bed
    finished, _ = run_files([PCAP], SERVERS, (443,), sni_policy="keep")
    recs = records_of(finished)
    kept = {(r["client_ip"], r["client_port"], r["first_ts"]): r for r in recs}
    sni = {}
    for f in finished:
        a = f.attempt
        sni[(ip_text(a.key[0]), a.key[1], a.odcid.hex(), a.version)] = a.sni
    for lab in labels:
        if lab["first_version"] == QUIC_VERSION_1:
            assert sni[(lab["client_ip"], lab["client_port"], lab["odcid"], QUIC_VERSION_1)] == lab["sni"]
    assert all(r["alpn"] == ["rstscope-echo"] or r["quic_version"] != QUIC_VERSION_1 for r in kept.values())


def test_classify_files_records(bed):
    recs, counters = classify_files([PCAP], SERVERS, topology=Topology())
    assert counters["connections"] == len(recs) > 0
    assert {r["transport"] for r in recs} == {"quic"} and {r["mode"] for r in recs} == {"window"}
    assert len({r["id"] for r in recs}) == len(recs)
    again_, _ = classify_files([PCAP], SERVERS)
    assert [r["id"] for r in again_] == [r["id"] for r in recs]  # stable
    hashed = {r["sni"] for r in recs if r["sni"]}
    assert hashed == {sni_value("allowed.example"), sni_value("blocked.example")}
    assert all(r["sni"] is None for r in classify_files([PCAP], SERVERS, sni_policy="none")[0])
    assert set(recs[0]) == set(recs[-1])


def test_a_datagram_that_is_not_quic_is_counted_not_used():
    from rstscope.quic.reader import QuicReader
    from rstscope.quic.udp import UdpDatagram
    assert QuicReader().read(UdpDatagram(T0 + 1, 4, CLI, SRV, 5555, 443, 64, 1, b"")) == "quic_empty_datagram"


def test_the_quic_command(tmp_path: Path) -> None:
    """`rstscope quic`: the bed's capture as a stage table and records; bad input exits 2 with the reason."""
    import subprocess
    import sys

    out = tmp_path / "q.jsonl"
    run = subprocess.run([sys.executable, "-m", "rstscope.cli", "quic", str(PCAP), "--server-ip",
                          ",".join(SERVERS), "--sni", "keep", "--format", "json", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["connections"] == len(records) > 0
    assert summary["stages"]["post_syn"] == sum(r["stage"] == "post_syn" for r in records) > 0
    assert {r["sni"] for r in records} >= {"blocked.example", "allowed.example"}
    bad = subprocess.run([sys.executable, "-m", "rstscope.cli", "quic", str(tmp_path / "q.jsonl"), "--server-ip",
                          "10.0.0.1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a pcap" in bad.stderr
