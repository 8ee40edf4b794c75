"""Radar's request rules, pure (query.py) and through the app: several series by position, names,
continents, control ranges, flooring, the inclusive dateEnd, zero-filled slots; and `continent` on the
rstscope extensions."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.conftest import BASE, NOW, PROFILE, expected_counts, shares
from rstscope.api import query as q
from rstscope.api.continents import CONTINENTS, COUNTRY_CONTINENT, continent_of, countries_in

SUMMARY = "/radar/tcp_resets_timeouts/summary"
SERIES = "/radar/tcp_resets_timeouts/timeseries_groups"
ALL = [("dateStart", "2024-09-02T00:00:00Z"), ("dateEnd", "2024-09-03T23:45:00Z")]
EU = {("DE", 3320), ("DE", 6805), ("FR", 3215)}


def parse(params: list[tuple[str, str]], timeseries: bool = False, now: datetime = NOW) -> q.SeriesQuery:
    return q.parse_series_query(params, now, timeseries=timeseries)


def test_continent_table() -> None:
    assert len(COUNTRY_CONTINENT) == 250 and set(COUNTRY_CONTINENT.values()) == set(CONTINENTS)
    for cc, cont in {"DE": "EU", "RU": "EU", "CY": "EU", "TR": "AS", "CN": "AS", "US": "NA", "PA": "NA",
                     "BR": "SA", "EG": "AF", "ZA": "AF", "AU": "OC", "TL": "OC", "AQ": "AN"}.items():
        assert continent_of(cc) == cont, cc
    assert continent_of("XX") == "" and continent_of("EU") == ""
    assert countries_in(["EU", "OC"]) >= {"DE", "FR", "AU"} and "US" not in countries_in(["EU"])


def test_series_by_position_and_broadcast() -> None:
    qy = parse([("location", "DE"), ("location", "fr,-XX"), ("dateRange", "7d")])
    assert [s.key for s in qy.series] == ["summary_0", "summary_1"] and not qy.named
    assert qy.series[0].filters.location.include == {"DE"}
    assert qy.series[1].filters.location == q.KeyFilter(frozenset({"FR"}), frozenset({"XX"}))
    assert qy.series[0].range == qy.series[1].range  # one dateRange applies to both
    ts = parse([("name", "a"), ("name", "b"), ("asn", "3320"), ("asn", "-3320")], timeseries=True)
    assert [s.key for s in ts.series] == ["a", "b"] and ts.named and ts.agg_interval == "1h"


def test_empty_value_means_not_set() -> None:
    qy = parse([("location", "DE"), ("location", ""), ("dateRange", "7d"), ("dateRange", ""),
                ("dateStart", ""), ("dateStart", "2024-08-20T00:00:00Z"),
                ("dateEnd", ""), ("dateEnd", "2024-08-27T00:00:00Z")])
    assert not qy.series[1].filters.location.given
    assert not qy.series[0].range.end_inclusive and qy.series[1].range.end_inclusive
    assert qy.series[0].range.duration == qy.series[1].range.duration == timedelta(days=7)


@pytest.mark.parametrize(("params", "message"), [
    ([("location", "DE"), ("location", "FR"), ("location", "US"), ("asn", "1"), ("asn", "2")], "2 values"),
    ([("name", "a"), ("location", "DE"), ("location", "FR")], "1 names for 2 series"),
    ([("name", "a"), ("name", "a")], "must differ"),
    ([("name", "meta")], "meta"),
    ([("name", "summary_1"), ("name", "x")], "another series"),
    ([("name", "")], "series name"),
    ([("name", "a\tb")], "series name"),
    ([("format", "JSON"), ("format", "CSV")], "give it once"),
    ([("aggInterval", "1h")], "unknown parameter"),
    ([("dateRange", "7d"), ("dateRange", "14d")], "same duration"),
    ([("dateRange", "1d"), ("dateStart", "2024-09-01T00:00:00Z")], "cannot be combined"),
    ([("location", "DE")] * 11, "max 10"),
    ([("continent", "Europe")], "continent"),
    ([("dateRange", "365d")], "364d"),
    ([("dateRange", "0w")], "dateRange"),
])
def test_series_errors(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(q.QueryError, match=message) as e:
        parse(params)
    assert e.value.code == 2001


def test_timeseries_scalars() -> None:
    with pytest.raises(q.QueryError, match="give it once"):
        parse([("aggInterval", "1h"), ("aggInterval", "1h")], timeseries=True)
    assert parse([("aggInterval", "1D"), ("format", "csv")], timeseries=True).format == "CSV"


@pytest.mark.parametrize(("spec", "start_days", "end_days"), [
    ("7d", -7, 0), ("7dControl", -14, -7), ("10dcontrol", -24, -14), ("24hControl", -8, -7), ("2w", -14, 0),
    ("2wControl", -28, -14), ("5wcontrol", -70, -35), ("52w", -364, 0),
])
def test_relative_and_control_ranges(spec: str, start_days: int, end_days: int) -> None:
    now = datetime(2024, 9, 3, 12, 7, 31, tzinfo=UTC)
    r = q.parse_range(spec, None, None, now)
    now15 = datetime(2024, 9, 3, 12, 0, tzinfo=UTC)  # floored to 15 minutes
    assert (r.start, r.end, r.stop) == (now15 + timedelta(days=start_days), now15 + timedelta(days=end_days),
                                        now15 + timedelta(days=end_days))
    assert not r.end_inclusive


def test_absolute_ranges_floor_and_include_the_end_bucket() -> None:
    r = q.parse_range(None, "2024-09-02T06:29:59Z", "2024-09-02T07:14:00+00:00", NOW)
    assert (q.iso(r.start), q.iso(r.end), q.iso(r.stop)) == ("2024-09-02T06:15:00Z", "2024-09-02T07:00:00Z",
                                                             "2024-09-02T07:15:00Z")
    assert list(q.slot_starts(r, "15m")) == [r.start_s + 900 * k for k in range(4)]
    assert [q.iso_s(t) for t in q.slot_starts(r, "1h")] == ["2024-09-02T06:00:00Z", "2024-09-02T07:00:00Z"]
    one = q.parse_range(None, "2024-09-02T06:00:00Z", "2024-09-02T06:10:00Z", NOW)  # both floor to 06:00
    assert one.duration == timedelta(0) and one.stop - one.start == timedelta(minutes=15)
    assert q.parse_range(None, None, "2024-09-02T00:00:00Z", NOW).start == datetime(2024, 8, 26, tzinfo=UTC)


def test_continent_filters() -> None:
    f = q.parse_filters(None, None, "EU")
    assert f.dimension == "country" and f.country_sets() == (countries_in(["EU"]), frozenset())
    assert f.accepts("DE") and not f.accepts("US") and not f.accepts("XX")
    g = q.parse_filters(None, None, "-EU")
    assert g.exclusion_only and g.accepts("US") and g.accepts("XX") and not g.accepts("FR")
    h = q.parse_filters("-DE", "3320", "EU,NA")
    assert h.dimension == "country_asn" and h.accepts("US:3320") and not h.accepts("DE:3320")
    assert q.parse_filters("DE,CN", None, "AS").country_sets() == (frozenset({"CN"}), frozenset())


def test_span_text() -> None:
    assert [q.span_text(timedelta(days=d, hours=h, minutes=m)) for d, h, m in
            ((7, 0, 0), (1, 12, 0), (0, 5, 15), (0, 0, 0))] == ["7d", "1d12h", "5h15m", "0m"]


# ---------------------------------------------------------------- through the app (synthetic rollups)


def get(client: TestClient, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["result"]
    return result


def close(got: dict[str, str], counts: dict[str, int]) -> bool:
    want = shares(counts)
    return all(abs(float(got[s]) - want[s]) < 1e-6 for s in want)


def test_continent_summary_and_exclusion(client: TestClient) -> None:
    eu = get(client, SUMMARY, [*ALL, ("continent", "EU")])["summary_0"]
    assert close(eu, expected_counts(EU))
    not_eu = get(client, SUMMARY, [*ALL, ("continent", "-EU")])["summary_0"]  # world minus EU: US and XX
    assert close(not_eu, expected_counts(set(PROFILE) - EU))
    na_only = get(client, SUMMARY, [*ALL, ("continent", "-EU"), ("location", "-XX")])["summary_0"]
    assert close(na_only, expected_counts({("US", 7922)}))


def test_named_series_and_the_summary_0_alias(client: TestClient) -> None:
    res = get(client, SUMMARY, [*ALL, ("name", "de"), ("name", "us"), ("location", "DE"), ("location", "US")])
    assert set(res) == {"meta", "de", "us", "summary_0"} and res["summary_0"] == res["de"]
    assert close(res["us"], expected_counts({("US", 7922)}))
    assert len(res["meta"]["dateRange"]) == 2
    ts = get(client, SERIES, [*ALL, ("name", "serie_0"), ("name", "b"), ("asn", "3320"), ("asn", "3215")])
    assert set(ts) == {"meta", "serie_0", "b"}


def test_csv_with_several_series(client: TestClient) -> None:
    params = [*ALL, ("location", "DE"), ("location", "FR")]
    text = client.get(SUMMARY, params=[*params, ("format", "CSV")]).text
    rows = list(csv.DictReader(io.StringIO(text)))
    res = get(client, SUMMARY, params)
    assert rows == [{"series": k, **res[k]} for k in ("summary_0", "summary_1")]
    text = client.get(SERIES, params=[*params, ("format", "CSV"), ("aggInterval", "1d")]).text
    lines = text.splitlines()
    assert lines[0] == "series,timestamps,post_syn,post_ack,post_psh,later_in_flow,no_match"
    assert [line.split(",")[:2] for line in lines[1:]] == [[k, t] for k in ("serie_0", "serie_1")
                                                         for t in ("2024-09-02T00:00:00Z", "2024-09-03T00:00:00Z")]


def test_control_series_over_the_app(client: TestClient) -> None:
    # NOW is day 2 12:00; 1d covers day 2's buckets, 1dControl the week before (no data: all zeros).
    res = get(client, SUMMARY, [("dateRange", "1d"), ("dateRange", "1dControl"), ("name", "now"), ("name", "before")])
    assert res["meta"]["dateRange"] == [{"startTime": "2024-09-02T12:00:00Z", "endTime": "2024-09-03T12:00:00Z"},
                                        {"startTime": "2024-08-26T12:00:00Z", "endTime": "2024-08-27T12:00:00Z"}]
    assert res["before"] == dict.fromkeys(q.STAGES, "0") and res["meta"]["confidenceInfo"]["level"] == 0
    notes = res["meta"]["confidenceInfo"]["annotations"]
    assert {(n["eventType"], n["startDate"]) for n in notes} == {("PIPELINE", "2024-08-26T12:00:00Z"),
                                                                  ("PIPELINE", "2024-09-03T01:00:00Z")}


def test_post_syn_caveat_only_for_filtered_series(client: TestClient) -> None:
    world = get(client, SUMMARY, ALL)["meta"]["confidenceInfo"]["annotations"]
    assert all(n["eventType"] == "PIPELINE" for n in world)
    de = get(client, SUMMARY, [*ALL, ("location", "DE")])["meta"]["confidenceInfo"]["annotations"]
    [caveat] = [n for n in de if n["eventType"] == "GENERAL"]
    n = expected_counts({("DE", 3320), ("DE", 6805)})["post_syn"]
    assert caveat["description"].startswith(f"Post-SYN (summary_0): {n} of these connections")


def test_extensions_take_continent(client: TestClient) -> None:
    top = get(client, "/rstscope/top/locations", [*ALL, ("continent", "EU"), ("minConnections", "0")])["top_0"]
    assert {i["clientCountryAlpha2"] for i in top} == {"DE", "FR"}
    ases = get(client, "/rstscope/top/ases", [*ALL, ("continent", "NA"), ("minConnections", "0")])["top_0"]
    assert [i["clientASN"] for i in ases] == [7922]
    tags = get(client, "/rstscope/tags", [*ALL, ("continent", "-EU")])
    assert tags["meta"]["connections"] == sum(expected_counts(set(PROFILE) - EU).values())
    assert tags["meta"]["units"] == [{"name": "*", "value": "connections"}]
    assert client.get("/rstscope/tags", params={"continent": "XY"}).status_code == 400


def test_one_bucket_range(client: TestClient) -> None:
    """dateStart == dateEnd is one 15-minute bucket (dateEnd is inclusive)."""
    t = q.iso_s(BASE + 900)
    res = get(client, SERIES, [("dateStart", t), ("dateEnd", t), ("aggInterval", "15m")])
    assert res["serie_0"]["timestamps"] == [t]
    assert close({s: res["serie_0"][s][0] for s in q.STAGES}, expected_counts(buckets=[BASE + 900]))
