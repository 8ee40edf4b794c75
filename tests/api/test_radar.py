"""The Radar endpoints: body shape (JSON and CSV), error shape, dimension choice, exclusion semantics,
and shares computed from summed counts (never averaged percentages)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.conftest import BASE, BUCKETS, NOW, PROFILE, expected_counts, shares
from rstscope.api.app import create_app
from rstscope.api.query import STAGES, iso_s
from rstscope.api.store import Store

SUMMARY = "/radar/tcp_resets_timeouts/summary"
SERIES = "/radar/tcp_resets_timeouts/timeseries_groups"
DAY1 = {"dateStart": iso_s(BASE), "dateEnd": iso_s(BASE + 86400)}
ALL = {"dateStart": iso_s(BASE), "dateEnd": iso_s(BASE + 2 * 86400)}


def get_ok(client: TestClient, path: str, **params: str) -> dict[str, Any]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["errors"] == []
    return body["result"]


def assert_shares(got: dict[str, str], counts: dict[str, int]) -> None:
    want = shares(counts)
    assert set(got) == set(STAGES)
    for s in STAGES:
        assert isinstance(got[s], str)
        assert float(got[s]) == pytest.approx(want[s], abs=1e-6), s


def test_summary_shape_world(client: TestClient) -> None:
    res = get_ok(client, SUMMARY, **ALL)
    assert set(res) == {"meta", "summary_0"}
    meta = res["meta"]
    assert meta["dateRange"] == [{"startTime": "2024-09-02T00:00:00Z", "endTime": "2024-09-04T00:00:00Z"}]
    assert meta["normalization"] == "PERCENTAGE"
    assert meta["lastUpdated"] == iso_s(BUCKETS[-1] + 900)
    assert meta["confidenceInfo"]["level"] == 4
    # The range runs past the data (which ends at 01:00 on day 2): said by a PIPELINE annotation.
    [gap] = meta["confidenceInfo"]["annotations"]
    assert gap["eventType"] == "PIPELINE" and gap["dataSource"] == "CONNECTION_ANOMALY"
    assert (gap["startDate"], gap["endDate"]) == (iso_s(BUCKETS[-1] + 900), "2024-09-04T00:15:00Z")
    assert meta["units"] == [{"name": "*", "value": "connections"}]
    assert_shares(res["summary_0"], expected_counts())


def test_date_range_is_relative_to_injected_now(client: TestClient) -> None:
    # NOW is day 2 at 12:00: 1d covers only the day-2 buckets.
    res = get_ok(client, SUMMARY, dateRange="1d")
    assert res["meta"]["dateRange"][0]["endTime"] == "2024-09-03T12:00:00Z"
    assert_shares(res["summary_0"], expected_counts(buckets=BUCKETS[8:]))


@pytest.mark.parametrize(("params", "pairs"), [
    ({"location": "DE"}, {("DE", 3320), ("DE", 6805)}),
    ({"location": "de,FR"}, {("DE", 3320), ("DE", 6805), ("FR", 3215)}),
    ({"asn": "3320"}, {("DE", 3320)}),
    ({"asn": "AS3320,7922"}, {("DE", 3320), ("US", 7922)}),
    ({"location": "DE", "asn": "6805"}, {("DE", 6805)}),
    ({"location": "DE", "asn": "-3320"}, {("DE", 6805)}),
    ({"location": "-DE"}, set(PROFILE) - {("DE", 3320), ("DE", 6805)}),
    ({"location": "-DE,-US"}, {("FR", 3215), ("XX", 0)}),
    ({"asn": "-3320"}, set(PROFILE) - {("DE", 3320)}),
    ({"location": "-US", "asn": "-0"}, {("DE", 3320), ("DE", 6805), ("FR", 3215)}),
])
def test_filters_aggregate_counts(client: TestClient, params: dict[str, str], pairs: set[tuple[str, int]]) -> None:
    res = get_ok(client, SUMMARY, **ALL, **params)
    assert_shares(res["summary_0"], expected_counts(pairs))


def test_shares_are_from_counts_not_averaged(client: TestClient) -> None:
    """DE and US have very different sizes: the average of their shares is not the combined share."""
    de = get_ok(client, SUMMARY, **ALL, location="DE")["summary_0"]
    us = get_ok(client, SUMMARY, **ALL, location="US")["summary_0"]
    both = get_ok(client, SUMMARY, **ALL, location="DE,US")["summary_0"]
    averaged = (float(de["post_syn"]) + float(us["post_syn"])) / 2
    assert abs(float(both["post_syn"]) - averaged) > 1
    assert_shares(both, expected_counts({("DE", 3320), ("DE", 6805), ("US", 7922)}))


def test_exclusion_is_world_minus_excluded(client: TestClient) -> None:
    """`-DE` equals the sum of the other countries, and (world - DE) from counts."""
    excl = get_ok(client, SUMMARY, **ALL, location="-DE")["summary_0"]
    others = get_ok(client, SUMMARY, **ALL, location="FR,US,XX")["summary_0"]
    assert excl == others


def test_timeseries_shape_and_intervals(client: TestClient) -> None:
    res = get_ok(client, SERIES, **ALL, aggInterval="15m")
    assert res["meta"]["aggInterval"] == "FIFTEEN_MINUTES"
    serie = res["serie_0"]
    assert set(serie) == {"timestamps", *STAGES}
    # Every slot of the range is listed (dateEnd inclusive: its own bucket too); empty slots are "0".
    grid = list(range(BASE, BASE + 2 * 86400 + 1, 900))
    assert serie["timestamps"] == [iso_s(b) for b in grid]
    for i, b in enumerate(grid):
        if b in BUCKETS:
            assert_shares({s: serie[s][i] for s in STAGES}, expected_counts(buckets=[b]))
        else:
            assert {s: serie[s][i] for s in STAGES} == dict.fromkeys(STAGES, "0")

    hourly = get_ok(client, SERIES, **ALL, aggInterval="1h")
    assert hourly["meta"]["aggInterval"] == "ONE_HOUR"
    assert hourly["serie_0"]["timestamps"] == [iso_s(t) for t in range(BASE, BASE + 2 * 86400 + 1, 3600)]
    first_hour = {s: hourly["serie_0"][s][0] for s in STAGES}
    assert_shares(first_hour, expected_counts(buckets=BUCKETS[:4]))
    assert_shares({s: hourly["serie_0"][s][24] for s in STAGES}, expected_counts(buckets=BUCKETS[8:]))

    daily = get_ok(client, SERIES, **ALL, aggInterval="1d", location="US")
    # Days 1, 2 and the (empty) first bucket of day 3 that the inclusive dateEnd reaches.
    assert daily["meta"]["aggInterval"] == "ONE_DAY" and len(daily["serie_0"]["timestamps"]) == 3
    assert daily["serie_0"]["no_match"][2] == "0"
    weekly = get_ok(client, SERIES, **ALL, aggInterval="1w")
    assert weekly["meta"]["aggInterval"] == "ONE_WEEK" and weekly["serie_0"]["timestamps"] == [iso_s(BASE)]
    assert_shares({s: weekly["serie_0"][s][0] for s in STAGES}, expected_counts())
    default = get_ok(client, SERIES, **ALL)
    assert default["meta"]["aggInterval"] == "FIFTEEN_MINUTES"


def test_csv_formats(client: TestClient) -> None:
    r = client.get(SUMMARY, params={**ALL, "format": "CSV"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    json_summary = get_ok(client, SUMMARY, **ALL)["summary_0"]
    assert table == [json_summary]

    r = client.get(SERIES, params={**ALL, "format": "csv", "aggInterval": "1h", "location": "FR"})
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    serie = get_ok(client, SERIES, **ALL, aggInterval="1h", location="FR")["serie_0"]
    assert [row["timestamps"] for row in rows] == serie["timestamps"]
    assert [row["post_psh"] for row in rows] == serie["post_psh"]


@pytest.mark.parametrize(("path", "params"), [
    (SUMMARY, {"location": "Germany"}),
    (SUMMARY, {"asn": "AS-x"}),
    (SUMMARY, {"dateRange": "7x"}),
    (SUMMARY, {"dateRange": "2y"}),
    (SUMMARY, {"dateRange": "60w"}),
    (SUMMARY, {"dateStart": "2020-01-01T00:00:00Z", "dateEnd": "2024-01-01T00:00:00Z"}),
    (SUMMARY, {"dateStart": "2024-09-03", "dateEnd": "2024-09-02"}),
    (SUMMARY, {"dateRange": "7d", "dateStart": "2024-09-02"}),
    (SUMMARY, {"format": "XML"}),
    (SUMMARY, {"aggInterval": "1h"}),
    (SUMMARY, {"bogus": "1"}),
    (SERIES, {"aggInterval": "5m"}),
    (SERIES, {"aggInterval": "15m", "dateRange": "52w"}),
])
def test_errors_have_radar_shape(client: TestClient, path: str, params: dict[str, str]) -> None:
    r = client.get(path, params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["success"] is False and body["result"] == {}
    assert len(body["errors"]) == 1
    assert isinstance(body["errors"][0]["code"], int) and body["errors"][0]["message"]


def test_unknown_path_has_error_shape(client: TestClient) -> None:
    r = client.get("/radar/nope")
    assert r.status_code == 404
    assert r.json()["success"] is False


def test_no_data_gives_zeros_and_level_zero(client: TestClient) -> None:
    res = get_ok(client, SUMMARY, dateStart="2020-01-01T00:00:00Z", dateEnd="2020-01-02T00:00:00Z")
    assert res["summary_0"] == dict.fromkeys(STAGES, "0")
    assert res["meta"]["confidenceInfo"]["level"] == 0
    empty = get_ok(client, SERIES, dateStart="2020-01-01T00:00:00Z", dateEnd="2020-01-02T00:00:00Z")["serie_0"]
    assert len(empty["timestamps"]) == 97 and set(empty["post_syn"]) == {"0"}  # zero-filled, 15 minutes


# ---------------------------------------------------------------- rstscope extensions


def test_meta_gives_the_data_span(client: TestClient) -> None:
    res = get_ok(client, "/rstscope/meta")
    assert res["dataStart"] == iso_s(BASE) and res["dataEnd"] == iso_s(BUCKETS[-1] + 900)
    assert res["locations"][0]["key"] == "US"
    assert {x["key"] for x in res["ases"]} == {"3320", "6805", "3215", "7922", "0"}
    assert res["connectionsExposed"] is False


def test_tags_and_signatures(client: TestClient) -> None:
    res = get_ok(client, "/rstscope/tags", **ALL, location="DE")
    counts = expected_counts({("DE", 3320), ("DE", 6805)})
    total = sum(counts.values())
    assert res["meta"]["connections"] == total
    by = {i["name"]: i for i in res["breakdown_0"]}
    assert by["timeout"]["count"] == counts["post_ack"]
    assert by["acknumsame"]["count"] == counts["post_psh"]
    assert float(by["acknumsame"]["share"]) == pytest.approx(100 * counts["post_psh"] / total, abs=1e-6)
    assert by["zmap"]["count"] == 0  # the full vocabulary is listed

    sig = get_ok(client, "/rstscope/signatures", **ALL, asn="3320")
    first = sig["breakdown_0"][0]
    assert first["name"] == "PSH+ACK→RST=RST" and first["stage"] == "post_psh"
    assert len(sig["breakdown_0"]) == 19
    r = client.get("/rstscope/signatures", params={**ALL, "format": "CSV"})
    assert r.text.splitlines()[0] == "name,count,share"


def test_top_lists_rank_by_anomaly_share(client: TestClient) -> None:
    res = get_ok(client, "/rstscope/top/ases", **ALL, minConnections="0")
    ranked = [i["clientASN"] for i in res["top_0"]]

    def anomaly(pair: tuple[str, int]) -> float:
        c = expected_counts({pair})
        return 1 - c["no_match"] / sum(c.values())

    def size(pair: tuple[str, int]) -> int:
        return sum(expected_counts({pair}).values())

    # Ties in share (3320, 3215 and 7922 are all at 40%) go to the larger network first.
    assert ranked == [asn for _, asn in sorted(PROFILE, key=lambda p: (-anomaly(p), -size(p)))]
    first = res["top_0"][0]
    assert first["clientASN"] == 0 and float(first["value"]) == pytest.approx(90.0)

    # A threshold drops the small ones; a location restricts to the ASes seen there.
    big = get_ok(client, "/rstscope/top/ases", **ALL, minConnections="500")["top_0"]
    assert {i["clientASN"] for i in big} == {3320, 7922}
    de = get_ok(client, "/rstscope/top/ases", **ALL, location="DE", minConnections="0")["top_0"]
    assert [i["clientASN"] for i in de] == [3320, 6805]

    locs = get_ok(client, "/rstscope/top/locations", **ALL, limit="2", location="-XX")["top_0"]
    assert [i["clientCountryAlpha2"] for i in locs] == ["US", "FR"]
    assert client.get("/rstscope/top/locations", params={"limit": "0"}).status_code == 400


def test_connections_are_404_unless_exposed(client: TestClient, analyzed: tuple[Path, Path]) -> None:
    r = client.get("/rstscope/connections", params={"asn": "0"})
    assert r.status_code == 404 and r.json()["success"] is False

    rollups, conns = analyzed
    s = Store()
    s.load_rollups(rollups)
    n = s.load_connections(conns)
    c = TestClient(create_app(s, now=lambda: NOW, expose_connections=True))
    res = get_ok(c, "/rstscope/connections", asn="0", limit="5")
    assert res["asn"] == 0 and 0 < len(res["connections"]) <= min(5, n)
    last = [x["last_ts"] for x in res["connections"]]
    assert last == sorted(last, reverse=True)
    assert c.get("/rstscope/connections", params={"asn": "0,1"}).status_code == 400
    assert c.get("/rstscope/connections").status_code == 400


def test_breakdowns_exclusion_subtracts_counts(client: TestClient) -> None:
    excl = get_ok(client, "/rstscope/tags", **ALL, location="-DE")
    others = get_ok(client, "/rstscope/tags", **ALL, location="FR,US,XX")
    assert excl["breakdown_0"] == others["breakdown_0"]
    assert excl["meta"]["connections"] == sum(expected_counts(set(PROFILE) - {("DE", 3320), ("DE", 6805)}).values())


def test_top_lists_and_meta_carry_names(client: TestClient) -> None:
    """Radar's top-list name fields: clientCountryName / clientASName (from the rollup rows, else the table)."""
    ases = get_ok(client, "/rstscope/top/ases", **ALL, minConnections="0")
    names = {i["clientASN"]: i["clientASName"] for i in ases["top_0"]}
    assert names == {0: "Unknown", 3320: "DTAG Internet service provider operations", 6805: "TDDE-ASN1",
                     3215: "Orange", 7922: "COMCAST-7922"}
    assert ases["meta"]["units"] == [{"name": "*", "value": "connections"}]
    locs = get_ok(client, "/rstscope/top/locations", **ALL, minConnections="0")["top_0"]
    assert {i["clientCountryAlpha2"]: i["clientCountryName"] for i in locs} == {
        "DE": "Germany", "FR": "France", "US": "United States", "XX": "Unknown"}
    assert all("clientASN" not in i for i in locs) and all("clientCountryAlpha2" not in i for i in ases["top_0"])

    r = client.get("/rstscope/top/ases", params={**ALL, "format": "CSV", "asn": "3215"})
    table = list(csv.reader(io.StringIO(r.text)))
    assert table[0][:4] == ["clientASN", "clientASName", "value", "connections"]
    assert table[1][:2] == ["3215", "Orange"]
    r = client.get("/rstscope/top/locations", params={**ALL, "format": "CSV", "location": "DE"})
    assert list(csv.reader(io.StringIO(r.text)))[1][:2] == ["DE", "Germany"]

    meta = get_ok(client, "/rstscope/meta")
    assert {x["key"]: x["name"] for x in meta["ases"]}["3320"] == "DTAG Internet service provider operations"
    assert {x["key"]: x["name"] for x in meta["locations"]} == {"US": "United States", "DE": "Germany",
                                                               "FR": "France", "XX": "Unknown"}
    assert {x["key"]: x["name"] for x in meta["ases"]}["0"] == "Unknown"


def test_names_of_rows_without_names(rows: list[dict[str, Any]]) -> None:
    """Rows from a producer without names: countries are named from the package's table, ASes stay blank."""
    s = Store()
    s.upsert([{k: v for k, v in r.items() if k != "name"} for r in rows])
    c = TestClient(create_app(s, now=lambda: NOW))
    meta = get_ok(c, "/rstscope/meta")
    assert {x["key"]: x["name"] for x in meta["locations"]}["DE"] == "Germany"
    assert {x["key"]: x["name"] for x in meta["ases"]} == {"3320": "", "6805": "", "3215": "", "7922": "",
                                                          "0": "Unknown"}
