"""Unit tests of the change-alert logic on hand-made rollup rows (the labelled evaluation: test_evaluation)."""

from __future__ import annotations

import random
from typing import Any

from rstscope.config import AlertParams, OutlierParams
from rstscope.core.rollup import BUCKET_S, Cell, row_dict
from rstscope.insights.alerts import DAY_S, AlertDetector, detect, judge
from rstscope.insights.model import alert_from_wire
from rstscope.insights.outliers import chi2_sf, homogeneity_confidence, rank_outliers

P = AlertParams(unit_s=3600, baseline_days=7, min_baseline_days=3, min_connections=100, min_change_pp=10.0,
                z_threshold=4.0, close_after=2, recurring_days=2)
T0 = 1740960000


def row(bucket: int, counts: dict[str, int], dim: str = "asn", key: str = "64500", name: str = "",
        transport: str = "tcp") -> dict[str, Any]:
    cell = Cell()
    for s, n in counts.items():
        cell.counts[s] += n
    r = row_dict((bucket, dim, key, transport), cell, BUCKET_S, name)
    return r


def hours(days: int, shape: Any, per_bucket: int = 50) -> list[dict[str, Any]]:
    """Rows of one ASN, every bucket: ``shape(t)`` gives the post_syn fraction at time t."""
    out = []
    for b in range(T0, T0 + days * DAY_S, BUCKET_S):
        syn = round(per_bucket * shape(b))
        out.append(row(b, {"post_syn": syn, "no_match": per_bucket - syn}, name="Example"))
    return out


def test_robust_z_floors() -> None:
    flat = [(2, 100)] * 7
    j = judge(50, 100, flat)
    assert j.median == 2.0 and j.z > 4  # binomial sd, not a zero MAD, is the denominator
    noisy = [(c, 100) for c in (2, 30, 5, 40, 3, 35, 20)]
    assert abs(judge(50, 100, noisy).z) < abs(j.z)  # a network that swings daily needs a larger move


def test_open_grow_close_and_wire() -> None:
    day, start, stop = 9, T0 + 9 * DAY_S + 6 * 3600, T0 + 9 * DAY_S + 10 * 3600
    rows = hours(12, lambda t: 0.9 if start <= t < stop else 0.02)
    (a,) = detect(rows, P)
    assert (a.stage, a.direction, a.start, a.end, a.state) == ("post_syn", "rise", start, stop, "closed")
    assert a.evidence.units == 4 and a.evidence.connections == 800 and a.name == "Example" and day == 9
    assert a.size_pp > 80 and not a.recurring
    assert alert_from_wire(a.to_wire()) == a


def test_too_few_connections_never_alert() -> None:
    start = T0 + 9 * DAY_S
    rows = hours(12, lambda t: 0.9 if start <= t < start + 4 * 3600 else 0.02, per_bucket=20)  # 80 / unit
    det = AlertDetector(P)
    for r in rows:
        det.add_row(r)
    det.advance(T0 + 12 * DAY_S)
    assert det.alerts() == [] and det.stats["units_small"] == 12 * 24 and det.stats["units_judged"] == 0


def test_order_independent_and_upsert_replaces() -> None:
    start = T0 + 9 * DAY_S + 6 * 3600
    rows = hours(12, lambda t: 0.9 if start <= t < start + 3 * 3600 else 0.02)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert detect(rows, P) == detect(shuffled, P)
    # an earlier version of the departing rows, replaced by the final one: same result
    early = [row(r["bucket_start"], {"no_match": 50}) for r in rows if r["counts"]["post_syn"] > 40]
    assert detect(early + rows, P) == detect(rows, P)
    assert detect(rows + early, P) == []  # the later version wins


def test_recurring_daily_wave_is_said_once() -> None:
    def wave(t: int) -> float:
        day, hour = divmod(t - T0, DAY_S)
        return 0.6 if day >= 7 and 2 * 3600 <= hour < 20 * 3600 else 0.02
    alerts = detect(hours(14, wave), P)
    regular = [a for a in alerts if not a.recurring]
    recurring = [a for a in alerts if a.recurring]
    assert len(regular) == P.recurring_days  # days 7 and 8, before the pattern is known
    assert len(recurring) == 1 and recurring[0].period_s == DAY_S
    assert recurring[0].start == T0 + 9 * DAY_S + 2 * 3600


def test_late_rows_counted_not_rejudged() -> None:
    rows = hours(10, lambda t: 0.02)
    det = AlertDetector(P)
    for r in rows:
        det.add_row(r)
    assert det.advance(T0 + 10 * DAY_S) == []
    det.add_row(row(T0 + 9 * DAY_S, {"post_syn": 50}))
    assert det.stats["late_rows"] == 1 and det.advance(T0 + 10 * DAY_S + 3600) == []
    det.add_row({"v": 1, "bucket_start": "x"})
    assert det.stats["bad_rows"] == 1


def test_memory_is_bounded() -> None:
    det = AlertDetector(P)
    for r in hours(20, lambda t: 0.02):
        det.add_row(r)
        if r["bucket_start"] % DAY_S == 0:
            det.advance(r["bucket_start"])
    det.advance(T0 + 20 * DAY_S)
    (net,) = det._nets.values()
    assert len(net.buckets) <= (P.baseline_days + 2) * DAY_S // BUCKET_S


def test_chi2_sf_closed_forms() -> None:
    for x, dof in ((9.487729, 4), (3.841459, 1), (7.814728, 3), (5.991465, 2)):
        assert abs(chi2_sf(x, dof) - 0.05) < 1e-6


def test_outlier_confidence_grows_with_counts() -> None:
    small_a, small_b = {"post_ack": 5, "no_match": 5}, {"post_ack": 2, "no_match": 8}
    big_a = {k: v * 100 for k, v in small_a.items()}
    big_b = {k: v * 100 for k, v in small_b.items()}
    assert homogeneity_confidence(small_a, small_b) < 0.9 < 0.999 < homogeneity_confidence(big_a, big_b)


def _cell(**counts: int) -> Cell:
    c = Cell()
    for s, n in counts.items():
        c.counts[s] += n
    return c


def test_rank_outliers_telcel_in_mexico() -> None:
    cells = {"MX:8151": _cell(post_ack=500, no_match=500), "MX:28403": _cell(post_ack=30, no_match=970),
             "MX:2": _cell(post_ack=30, no_match=970), "MX:3": _cell(post_ack=30, no_match=970),
             "MX:1": _cell(post_ack=10, no_match=20)}
    mx = Cell()
    for c in cells.values():
        mx.merge(c)
    found = rank_outliers(cells, "country_asn", {"MX": mx}, OutlierParams(min_connections=100, confidence=0.99),
                          names={"MX:8151": "Telcel"})
    assert found[0].key == "MX:8151" and "MX:1" not in [o.key for o in found]
    top = found[0]
    assert top.peer == "country:MX" and top.stage == "post_ack" and top.peer_connections == 3030
    assert top.name == "Telcel" and 40 < top.distance <= 50 and top.confidence > 0.999


# ---------------------------------------------------------------- transports (issue 17)


def test_quic_rows_never_enter_a_tcp_baseline() -> None:
    """Alerts are of TCP rows: QUIC rows of the same network (here a daily QUIC post_syn wave and a QUIC
    episode that would alert on its own) change nothing and are counted as other_transport."""
    start = T0 + 9 * DAY_S + 6 * 3600
    tcp = hours(12, lambda t: 0.9 if start <= t < start + 3 * 3600 else 0.02)
    quic = [row(r["bucket_start"], {"post_syn": 45 if r["bucket_start"] % DAY_S < 6 * 3600 else 0, "no_match": 5},
                transport="quic") for r in tcp]
    alone = detect(tcp, P)
    assert len(alone) == 1
    det = AlertDetector(P)
    for r in [*quic, *tcp]:
        det.add_row(r)
    det.advance(T0 + 12 * DAY_S)
    assert det.alerts() == alone and det.stats["other_transport"] == len(quic)
    assert detect(quic, P) == []  # QUIC rows alone: nothing judged


def test_outliers_rank_one_transport_against_its_own_peers(tmp_path: Any, capsys: Any) -> None:
    """`rstscope outliers --transport`: networks and peers of one transport. AS 8151 is an outlier in MX
    over QUIC only; over TCP (the default) it looks like its peers, and the QUIC rows do not move that."""
    import json

    from rstscope.insights.cli import main

    def cell_rows(transport: str, odd: dict[str, int]) -> list[dict[str, Any]]:
        out = []
        for key, dim, counts in (("MX:8151", "country_asn", odd), ("MX:28403", "country_asn", {"no_match": 900}),
                                 ("MX", "country", {s: odd.get(s, 0) + (900 if s == "no_match" else 0)
                                                    for s in ("post_ack", "no_match")})):
            out.append(row(T0, counts, dim=dim, key=key, transport=transport))
        return out

    path = tmp_path / "r.jsonl"
    rows = cell_rows("tcp", {"no_match": 900}) + cell_rows("quic", {"post_ack": 450, "no_match": 450})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    topo = tmp_path / "t.yaml"
    topo.write_text("outliers:\n  min_connections: 100\n  confidence: 0.99\n")
    assert main(["outliers", "--rollups", str(path), "--dimension", "country_asn", "--topology", str(topo)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["outliers", "--rollups", str(path), "--dimension", "country_asn", "--topology", str(topo),
                 "--transport", "quic"]) == 0
    got = {o["key"]: o for o in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(got) == {"MX:8151", "MX:28403"}  # with two ASes each departs from the other
    assert (got["MX:8151"]["stage"], got["MX:8151"]["share"], got["MX:8151"]["peer_share"]) == ("post_ack", 50.0, 0.0)
