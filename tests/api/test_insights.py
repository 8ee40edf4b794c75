"""Alerts and outliers in the API: the store's alerts table (upserts by id, time overlap, network filters),
their parameters, `GET /rstscope/alerts` and `GET /rstscope/outliers` (JSON, CSV, filters, errors), the
alerts as Radar annotations (checked by the official client in strict mode), and `serve --alerts`."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from cloudflare import Cloudflare
from fastapi.testclient import TestClient

from api.conftest import BASE, NOW, PROFILE, REPO, free_port, make_alert, serving, write_alerts
from rstscope.api import query as q
from rstscope.api.app import AlertsBody, OutliersBody, create_app
from rstscope.api.store import BadRow, Store
from rstscope.config import OutlierParams
from rstscope.insights.model import Alert, alert_from_wire

DAY = 86400
H = 3600
SUMMARY = "/radar/tcp_resets_timeouts/summary"
SERIES = "/radar/tcp_resets_timeouts/timeseries_groups"
# The alerts of these tests, on the networks of conftest's PROFILE (data: 8 buckets on day 1, 4 on day 2).
A_DTAG = make_alert("country_asn", "DE:3320", "post_psh", BASE + H, BASE + 2 * H, size_pp=25.0, name="DTAG")
A_DE = make_alert("country", "DE", "post_psh", BASE + 900, None, size_pp=12.0, name="Germany")  # open
A_COMCAST = make_alert("asn", "7922", "post_syn", BASE + DAY, BASE + DAY + H, size_pp=-15.0, baseline_share=30.0,
                       recurring=True)
A_WORLD = make_alert("world", "", "post_ack", BASE + 1800, BASE + 5400, size_pp=11.0)
A_OLD = make_alert("country", "FR", "post_syn", BASE - 3 * DAY, BASE - 2 * DAY)
A_US = make_alert("country_asn", "US:7922", "later_in_flow", BASE + DAY + 900, BASE + DAY + 2 * H)
ALERTS = [A_DTAG, A_DE, A_COMCAST, A_WORLD, A_OLD, A_US]
ALL = {"dateStart": q.iso_s(BASE), "dateEnd": q.iso_s(BASE + 2 * DAY)}


@pytest.fixture(scope="module")
def istore(rows: list[dict[str, Any]]) -> Store:
    s = Store()
    s.upsert(rows)
    assert s.upsert_alerts(ALERTS) == len(ALERTS)
    return s


@pytest.fixture(scope="module")
def iclient(istore: Store) -> TestClient:
    return TestClient(create_app(istore, now=lambda: NOW))


def ids(alerts: list[Alert] | list[dict[str, Any]]) -> list[str]:
    return [a.id if isinstance(a, Alert) else a["id"] for a in alerts]


def get(client: TestClient, path: str, params: dict[str, str] | list[tuple[str, str]]) -> dict[str, Any]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["success"] is True and body["errors"] == []
    result: dict[str, Any] = body["result"]
    return result


def bad(client: TestClient, path: str, params: dict[str, str], words: str) -> None:
    r = client.get(path, params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["success"] is False and body["result"] == {} and body["errors"][0]["code"] == 2001
    assert words in body["errors"][0]["message"], body


# ---------------------------------------------------------------- store


def test_an_alert_id_keeps_its_latest_version(tmp_path: Path) -> None:
    s = Store(tmp_path / "a.duckdb", hold=False)
    grown = replace(A_DE, observed_share=A_DE.observed_share + 3)
    closed = replace(grown, end=BASE + 3 * H, state="closed")
    assert s.upsert_alerts([A_DE]) == 1
    assert s.upsert_alerts([grown, closed]) == 1  # the last of one batch wins
    s.upsert_alerts([A_DTAG])
    assert s.alert_count() == 2
    assert s.alerts(0, 2**40) == [A_DTAG, closed]  # newest first; the stored one is the closed version
    s.upsert_alerts([closed])  # a replay changes nothing
    assert s.alert_count() == 2 and s.alerts(0, 2**40, state="open") == []
    assert s.delete_alerts([A_DTAG.id]) == 1 and s.alerts(0, 2**40) == [closed]


def test_alerts_overlap_the_range(istore: Store) -> None:
    # [start, end): an alert ending where the range starts does not overlap it, nor one starting at its end.
    assert A_DTAG not in istore.alerts(BASE + 2 * H, BASE + 3 * H)
    assert A_DTAG not in istore.alerts(BASE, BASE + H)
    assert A_DTAG in istore.alerts(BASE + 2 * H - 900, BASE + 2 * H)
    # An open alert overlaps everything after its start, and nothing before.
    assert A_DE in istore.alerts(BASE + 300 * DAY, BASE + 301 * DAY)
    assert A_DE not in istore.alerts(BASE, BASE + 900)
    assert ids(istore.alerts(BASE, BASE + 2 * DAY)) == ids([A_US, A_COMCAST, A_DTAG, A_WORLD, A_DE])
    assert istore.alerts(BASE, BASE + 2 * DAY, limit=2) == [A_US, A_COMCAST]
    assert istore.alerts(0, 2**40, stage="post_syn") == [A_COMCAST, A_OLD]
    assert istore.alerts(0, 2**40, state="open") == [A_DE]


def filters(location: str | None = None, asn: str | None = None, continent: str | None = None) -> q.Filters:
    return q.parse_filters(location, asn, continent)


@pytest.mark.parametrize(("f", "want"), [
    (filters(), [A_US, A_COMCAST, A_DTAG, A_WORLD, A_DE]),
    (filters("DE"), [A_DTAG, A_DE]),  # the country and its ASes there
    (filters(continent="EU"), [A_DTAG, A_DE]),
    (filters("-DE"), [A_US]),  # countries and country+ASN networks outside Germany
    (filters(asn="7922"), [A_US, A_COMCAST]),  # the AS, and the AS in any country
    (filters(asn="-3320"), [A_US, A_COMCAST]),
    (filters("DE", "3320"), [A_DTAG]),
    (filters("US", "3320"), []),
])
def test_alerts_within_the_filters(istore: Store, f: q.Filters, want: list[Alert]) -> None:
    assert istore.alerts(BASE, BASE + 2 * DAY, f) == want


@pytest.mark.parametrize(("f", "want"), [
    (filters(), [A_WORLD]),  # a world series: world alerts only
    (filters("DE"), [A_DE]),  # a series of Germany: Germany's alerts, not its ASes'
    (filters("DE", "3320"), [A_DTAG]),
    (filters(asn="7922"), [A_COMCAST]),
    (filters("DE,US"), [A_DE]),
])
def test_alerts_of_exactly_a_series_network(istore: Store, f: q.Filters, want: list[Alert]) -> None:
    assert istore.alerts(BASE, BASE + 2 * DAY, f, exact=True) == want


def test_load_alerts_from_a_file(tmp_path: Path) -> None:
    s = Store()
    path = write_alerts(tmp_path / "a.jsonl", [A_DE, A_DTAG, replace(A_DE, size_pp=13.0)])
    assert s.load_alerts(path) == 2 and s.load_alerts(path) == 2  # by id: twice is once
    assert s.alert_count() == 2 and {a.size_pp for a in s.alerts(0, 2**40)} == {13.0, 25.0}
    wrong = {**A_DE.to_wire(), "state": "ajar"}
    (tmp_path / "bad.jsonl").write_bytes(orjson.dumps(A_DE.to_wire()) + b"\n\n" + orjson.dumps(wrong) + b"\n")
    with pytest.raises(BadRow, match="line 3: not an alert"):
        s.load_alerts(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_bytes(b"{nope\n")
    with pytest.raises(BadRow, match="line 1"):
        s.load_alerts(tmp_path / "bad2.jsonl")


# ---------------------------------------------------------------- parameters


def test_alert_and_outlier_parameters() -> None:
    aq = q.parse_alert_query({"location": "de", "stage": "Post_PSH", "state": "OPEN", "limit": "5",
                              "dateRange": "2d", "format": "csv"}, NOW)
    assert (aq.stage, aq.state, aq.limit, aq.format, aq.filters.location.include) == \
        ("post_psh", "open", 5, "CSV", frozenset({"DE"}))
    assert aq.range == q.parse_range("2d", None, None, NOW)
    oq = q.parse_outlier_query({"dimension": "ASN", "asn": "-0"}, NOW)
    assert (oq.dimension, oq.limit, oq.filters.asn.exclude) == ("asn", 20, frozenset({"0"}))
    assert q.parse_outlier_query({}, NOW).dimension == "country_asn"
    for params, words in [({"stage": "post_fin"}, "stage"), ({"state": "ajar"}, "state"), ({"limit": "0"}, "limit"),
                          ({"limit": "1001"}, "limit"), ({"dimension": "asn"}, "unknown parameter"),
                          ({"location": "DE", "location2": "x"}, "unknown parameter")]:
        with pytest.raises(q.QueryError, match=words):
            q.parse_alert_query(params, NOW)
    for params, words in [({"dimension": "world"}, "dimension"), ({"dimension": "asn", "location": "DE"},
                                                                     "do not apply"),
                          ({"dimension": "country", "asn": "3320"}, "does not apply"), ({"limit": "101"}, "limit"),
                          ({"stage": "post_syn"}, "unknown parameter")]:
        with pytest.raises(q.QueryError, match=words):
            q.parse_outlier_query(params, NOW)


# ---------------------------------------------------------------- GET /rstscope/alerts


def test_alerts_endpoint_json(iclient: TestClient) -> None:
    res = get(iclient, "/rstscope/alerts", {**ALL, "location": "DE"})
    AlertsBody.model_validate({"success": True, "errors": [], "result": res})
    assert ids(res["alerts"]) == ids([A_DTAG, A_DE])
    assert [alert_from_wire(a) for a in res["alerts"]] == [A_DTAG, A_DE]  # the wire format, unchanged
    assert res["meta"] == {"dateRange": [{"startTime": "2024-09-02T00:00:00Z", "endTime": "2024-09-04T00:00:00Z"}],
                           "lastUpdated": "2024-09-03T01:00:00Z", "count": 2, "limit": 100}
    assert ids(get(iclient, "/rstscope/alerts", {**ALL, "asn": "AS7922,-3320"})["alerts"]) == ids([A_US, A_COMCAST])
    assert ids(get(iclient, "/rstscope/alerts", {**ALL, "state": "open"})["alerts"]) == [A_DE.id]
    assert ids(get(iclient, "/rstscope/alerts", {**ALL, "stage": "post_syn"})["alerts"]) == [A_COMCAST.id]
    assert ids(get(iclient, "/rstscope/alerts", {**ALL, "limit": "1"})["alerts"]) == [A_US.id]
    # dateRange=7d ends at NOW (2024-09-03T12:00Z); in the last 2 hours only the open alert runs on.
    assert ids(get(iclient, "/rstscope/alerts", {})["alerts"]) == ids([A_US, A_COMCAST, A_DTAG, A_WORLD, A_DE, A_OLD])
    assert ids(get(iclient, "/rstscope/alerts", {"dateRange": "2h"})["alerts"]) == [A_DE.id]
    assert ids(get(iclient, "/rstscope/alerts", {"dateRange": "1d", "location": "FR"})["alerts"]) == []
    # A location filter leaves out AS networks (they have no country), even with an exclusion.
    assert ids(get(iclient, "/rstscope/alerts", {**ALL, "asn": "7922", "location": "-DE"})["alerts"]) == [A_US.id]
    recurring = get(iclient, "/rstscope/alerts", {**ALL, "asn": "7922", "stage": "post_syn"})["alerts"]
    assert ids(recurring) == [A_COMCAST.id] and recurring[0]["recurring"] is True


def test_alerts_endpoint_csv(iclient: TestClient) -> None:
    r = iclient.get("/rstscope/alerts", params={**ALL, "location": "DE", "format": "CSV"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [x["id"] for x in rows] == ids([A_DTAG, A_DE])
    dtag, de = rows
    assert dtag["key"] == "DE:3320" and dtag["end"] == str(A_DTAG.end) and dtag["recurring"] == "false"
    assert float(dtag["size_pp"]) == A_DTAG.size_pp and int(dtag["connections"]) == A_DTAG.evidence.connections
    assert de["end"] == "" and de["state"] == "open" and de["period_s"] == ""
    empty = iclient.get("/rstscope/alerts", params={**ALL, "location": "BR", "format": "csv"}).text
    assert empty.splitlines() == [",".join(("id", "dimension", "key", "name", "stage", "state", "direction", "start",
                                            "end", "observed_share", "baseline_share", "size_pp", "score",
                                            "recurring", "period_s", "connections", "stage_connections",
                                            "baseline_connections", "baseline_stage_connections", "baseline_days",
                                            "units"))]


def test_alerts_endpoint_errors(iclient: TestClient) -> None:
    bad(iclient, "/rstscope/alerts", {"stage": "nope"}, "stage")
    bad(iclient, "/rstscope/alerts", {"state": "ajar"}, "state")
    bad(iclient, "/rstscope/alerts", {"limit": "-1"}, "limit")
    bad(iclient, "/rstscope/alerts", {"location": "Germany"}, "location")
    bad(iclient, "/rstscope/alerts", {"dateRange": "7d", "dateStart": "2024-09-01"}, "dateRange")
    bad(iclient, "/rstscope/alerts", {"format": "xml"}, "format")
    bad(iclient, "/rstscope/alerts", {"aggInterval": "1h"}, "unknown parameter")


# ---------------------------------------------------------------- annotations


def alert_notes(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [n for n in result["meta"]["confidenceInfo"]["annotations"] if n["eventType"] == "TRAFFIC_ANOMALY"]


def test_alerts_annotate_the_series_of_their_network(iclient: TestClient) -> None:
    day1 = {"dateStart": q.iso_s(BASE), "dateEnd": q.iso_s(BASE + DAY - 900)}
    [world] = alert_notes(get(iclient, SUMMARY, day1))
    assert world["startDate"] == q.iso_s(A_WORLD.start) and world["endDate"] == q.iso_s(A_WORLD.end or 0)
    assert world["dataSource"] == "CONNECTION_ANOMALY" and world["isInstantaneous"] is False
    assert world["tags"] == ["alert", "post_ack", "rise", "closed"]
    assert f"alert {A_WORLD.id}: Post-ACK share of world rose to 16.0% from a baseline of 5.0% (+11.0 pp" \
        in world["description"]
    # The linked URL asks /rstscope/alerts for this very alert.
    link = httpx.URL(world["linkedUrl"])
    assert link.path == "/rstscope/alerts"
    assert ids(get(iclient, "/rstscope/alerts", list(link.params.multi_items()))["alerts"]) == [A_WORLD.id]
    # Germany: its own (open) alert, clipped to the range; not its ASes'.
    [de] = alert_notes(get(iclient, SUMMARY, {**day1, "location": "DE"}))
    assert (de["startDate"], de["endDate"]) == (q.iso_s(A_DE.start), q.iso_s(BASE + DAY))
    assert de["description"].endswith("; open") and "(Germany)" in de["description"]
    [dtag] = alert_notes(get(iclient, SERIES, {**day1, "location": "DE", "asn": "3320"}))
    assert "AS3320 in DE (DTAG)" in dtag["description"] and "+25.0 pp" in dtag["description"]
    [comcast] = alert_notes(get(iclient, SERIES, {**ALL, "asn": "7922", "aggInterval": "1h"}))
    assert "recurring daily" in comcast["description"] and comcast["tags"][-2:] == ["recurring", "closed"]
    assert "fell to 15.0%" in comcast["description"]
    # Several series: each series' alerts, once each.
    two = get(iclient, SUMMARY, [("location", "DE"), ("location", "DE"), ("asn", ""), ("asn", "3320"),
                                 ("dateStart", day1["dateStart"]), ("dateEnd", day1["dateEnd"])])
    assert sorted(n["description"].split(":")[0] for n in alert_notes(two)) == \
        sorted([f"alert {A_DE.id}", f"alert {A_DTAG.id}"])
    # Outside the alerts' time: none.
    assert alert_notes(get(iclient, SUMMARY, {"dateStart": q.iso_s(BASE - 6 * DAY),
                                              "dateEnd": q.iso_s(BASE - 5 * DAY)})) == []


@pytest.fixture(scope="module")
def radar_server(istore: Store) -> Iterator[str]:
    """The app on a real uvicorn server (the official client speaks HTTP)."""
    server = uvicorn.Server(uvicorn.Config(create_app(istore, now=lambda: NOW), host="127.0.0.1", port=free_port(),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(10)


def test_the_official_client_reads_alert_annotations(radar_server: str) -> None:
    with Cloudflare(api_token="rstscope-test", base_url=radar_server, max_retries=0,
                    _strict_response_validation=True) as cf:
        got = cf.radar.tcp_resets_timeouts.summary(location=["DE"], asn=["3320"], date_start=[q.iso_s(BASE)],
                                                   date_end=[q.iso_s(BASE + DAY - 900)])
        notes = [n for n in got.meta.confidence_info.annotations if n.event_type == "TRAFFIC_ANOMALY"]
        assert [(n.start_date.timestamp(), n.end_date.timestamp()) for n in notes] == [(A_DTAG.start, A_DTAG.end)]
        assert notes[0].data_source == "CONNECTION_ANOMALY" and not notes[0].is_instantaneous
        series = cf.radar.tcp_resets_timeouts.timeseries_groups(location=["DE"], date_start=[q.iso_s(BASE)],
                                                                date_end=[q.iso_s(BASE + 2 * DAY)],
                                                                agg_interval="1h")
        notes = [n for n in series.meta.confidence_info.annotations if n.event_type == "TRAFFIC_ANOMALY"]
        assert len(notes) == 1 and A_DE.id in notes[0].description


# ---------------------------------------------------------------- GET /rstscope/outliers


def profile_counts(pairs: set[tuple[str, int]]) -> dict[str, int]:
    """The pairs' connections per stage over all buckets (conftest's oracle: bucket i scales by 1 + i % 3)."""
    scale = sum(1 + i % 3 for i in range(12))
    out = dict.fromkeys(q.STAGES, 0)
    for pair in pairs:
        for s, n in PROFILE[pair].items():
            out[s] += n * scale
    return out


def tvd(a: dict[str, int], b: dict[str, int]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    return 50 * sum(abs(a[s] / na - b[s] / nb) for s in q.STAGES)


def test_outliers_endpoint(iclient: TestClient) -> None:
    res = get(iclient, "/rstscope/outliers", ALL)
    OutliersBody.model_validate({"success": True, "errors": [], "result": res})
    assert res["meta"]["dimension"] == "country_asn" and res["meta"]["minConnections"] == 500
    [dtag] = res["outliers"]  # DE:3320 (Post-PSH heavy) against AS6805, the rest of Germany
    own, rest = profile_counts({("DE", 3320)}), profile_counts({("DE", 6805)})
    assert (dtag["key"], dtag["peer"], dtag["stage"], dtag["name"]) == \
        ("DE:3320", "country:DE", "post_psh", "DTAG Internet service provider operations")
    assert (dtag["connections"], dtag["peer_connections"]) == (sum(own.values()), sum(rest.values()))
    assert dtag["distance"] == pytest.approx(tvd(own, rest), abs=1e-6) and dtag["confidence"] > 0.99
    assert dtag["share"] == pytest.approx(30.0) and dtag["peer_share"] == 0.0
    # Countries against the rest of the world, largest departure first.
    world = profile_counts(set(PROFILE))
    countries = get(iclient, "/rstscope/outliers", {**ALL, "dimension": "country"})["outliers"]
    for o in countries:
        cc = o["key"]
        own = profile_counts({p for p in PROFILE if p[0] == cc})
        assert o["peer"] == "world" and o["distance"] == pytest.approx(
            tvd(own, {s: world[s] - own[s] for s in q.STAGES}), abs=1e-6)
    assert [o["distance"] for o in countries] == sorted((o["distance"] for o in countries), reverse=True)
    assert {o["key"] for o in countries} >= {"DE", "US"}
    assert [o["key"] for o in get(iclient, "/rstscope/outliers", {**ALL, "dimension": "country",
                                                                 "location": "US"})["outliers"]] == ["US"]
    assert get(iclient, "/rstscope/outliers", {**ALL, "location": "FR"})["outliers"] == []  # one AS: no peers
    assert [o["key"] for o in get(iclient, "/rstscope/outliers", {**ALL, "dimension": "country",
                                                                 "limit": "1"})["outliers"]] == [countries[0]["key"]]


def test_outliers_csv_thresholds_and_errors(iclient: TestClient, istore: Store) -> None:
    r = iclient.get("/rstscope/outliers", params={**ALL, "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert r.headers["content-type"].startswith("text/csv") and [x["key"] for x in rows] == ["DE:3320"]
    assert list(rows[0]) == ["dimension", "key", "name", "peer", "stage", "share", "peer_share", "distance",
                             "confidence", "connections", "peer_connections"]
    strict = TestClient(create_app(istore, now=lambda: NOW, outliers=OutlierParams(min_connections=10**6)))
    res = get(strict, "/rstscope/outliers", ALL)
    assert res["outliers"] == [] and res["meta"]["minConnections"] == 10**6
    bad(iclient, "/rstscope/outliers", {"dimension": "world"}, "dimension")
    bad(iclient, "/rstscope/outliers", {"dimension": "asn", "location": "DE"}, "do not apply")
    bad(iclient, "/rstscope/outliers", {"dimension": "country", "asn": "3320"}, "does not apply")
    bad(iclient, "/rstscope/outliers", {"limit": "0"}, "limit")
    bad(iclient, "/rstscope/outliers", {"state": "open"}, "unknown parameter")


# ---------------------------------------------------------------- rstscope serve --alerts


def test_serve_loads_alerts(tmp_path: Path, rollups_file: Path) -> None:
    alerts = write_alerts(tmp_path / "alerts.jsonl", ALERTS)
    with serving(rollups_file, "rstscope.api.cli", alerts=alerts) as base:
        got = httpx.get(base + "/rstscope/alerts", params={"dateStart": q.iso_s(BASE - 7 * DAY),
                                                           "dateEnd": q.iso_s(BASE + 2 * DAY)}).json()
    assert sorted(ids(got["result"]["alerts"])) == sorted(ids(ALERTS))
    (tmp_path / "bad.jsonl").write_bytes(orjson.dumps(A_DE.to_wire()) + b"\n" + b'{"v": 1}\n')
    run = subprocess.run([sys.executable, "-m", "rstscope.api.cli", "serve", "--port", str(free_port()),
                          "--alerts", str(tmp_path / "bad.jsonl")], cwd=REPO, capture_output=True, timeout=60)
    assert run.returncode == 2 and b"line 2: not an alert" in run.stderr


@pytest.mark.parametrize("raw", ["²", "１２", "٣"])
def test_limits_are_ascii_digits(iclient: TestClient, raw: str) -> None:
    bad(iclient, "/rstscope/alerts", {"limit": raw}, "limit")
    bad(iclient, "/rstscope/outliers", {"limit": raw}, "limit")
    bad(iclient, "/rstscope/top/locations", {"minConnections": raw}, "minConnections")
