"""Parameter parsing is pure: these pin the rules without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rstscope.api import query as q

NOW = datetime(2024, 9, 3, 12, 0, tzinfo=UTC)


def test_locations_include_exclude_case_insensitive() -> None:
    kf = q.parse_locations("de, fr,-US")
    assert kf.include == {"DE", "FR"} and kf.exclude == {"US"}


@pytest.mark.parametrize("bad", ["", "D", "DEU", "DE,", "1A", "--DE", "DE,-DE"])
def test_bad_locations(bad: str) -> None:
    with pytest.raises(q.QueryError):
        q.parse_locations(bad)


def test_asns_accept_as_prefix_and_exclusion() -> None:
    kf = q.parse_asns("AS3320,174,-as13335")
    assert kf.include == {"3320", "174"} and kf.exclude == {"13335"}


@pytest.mark.parametrize("bad", ["x", "3320x", "-", "4294967296", "3320,,174"])
def test_bad_asns(bad: str) -> None:
    with pytest.raises(q.QueryError):
        q.parse_asns(bad)


@pytest.mark.parametrize(("loc", "asn", "dim"), [
    (None, None, "world"), ("DE", None, "country"), (None, "3320", "asn"), ("DE", "3320", "country_asn"),
    ("-DE", None, "country"),
])
def test_dimension_choice(loc: str | None, asn: str | None, dim: str) -> None:
    f = q.Filters(q.parse_locations(loc), q.parse_asns(asn))
    assert f.dimension == dim


def test_exclusion_only_and_country_asn_accepts() -> None:
    f = q.Filters(q.parse_locations("-DE"), q.KeyFilter())
    assert f.exclusion_only and not f.accepts("DE") and f.accepts("FR")
    g = q.Filters(q.parse_locations("DE"), q.parse_asns("-3320"))
    assert not g.exclusion_only
    assert g.accepts("DE:6805") and not g.accepts("DE:3320") and not g.accepts("FR:6805")


def test_date_range_relative_to_now() -> None:
    r = q.parse_range("7d", None, None, NOW)
    assert r.end == NOW and r.start == NOW - timedelta(days=7)
    assert q.parse_range(None, None, None, NOW).start == NOW - timedelta(days=7)  # Radar's default
    assert q.parse_range("4w", None, None, NOW).start == NOW - timedelta(weeks=4)
    assert q.parse_range("24h", None, None, NOW).start == NOW - timedelta(hours=24)


def test_absolute_range_naive_is_utc() -> None:
    r = q.parse_range(None, "2024-09-01T00:00:00", "2024-09-02T00:00:00+02:00", NOW)
    assert r.start == datetime(2024, 9, 1, tzinfo=UTC)
    assert r.end == datetime(2024, 9, 1, 22, tzinfo=UTC)


@pytest.mark.parametrize(("rng", "start", "end", "code"), [
    ("7x", None, None, q.E_INVALID),
    ("0d", None, None, q.E_INVALID),
    ("53w", None, None, q.E_RANGE),
    ("7d", "2024-09-01", None, q.E_INVALID),  # mixed
    (None, "2024-09-02", "2024-09-01", q.E_INVALID),  # reversed
    (None, "2022-01-01", "2024-01-01", q.E_RANGE),  # > 1 year
    (None, "yesterday", None, q.E_INVALID),
])
def test_bad_ranges(rng: str | None, start: str | None, end: str | None, code: int) -> None:
    with pytest.raises(q.QueryError) as e:
        q.parse_range(rng, start, end, NOW)
    assert e.value.code == code


def test_agg_interval_default_and_point_limit() -> None:
    assert q.parse_agg_interval(None, q.parse_range("1d", None, None, NOW)) == "15m"
    assert q.parse_agg_interval(None, q.parse_range("7d", None, None, NOW)) == "1h"
    assert q.parse_agg_interval(None, q.parse_range("12w", None, None, NOW)) == "1d"
    assert q.parse_agg_interval(None, q.parse_range("52w", None, None, NOW)) == "1d"  # Radar: > 1 month, 1 day
    with pytest.raises(q.QueryError) as e:
        q.parse_agg_interval("15m", q.parse_range("52w", None, None, NOW))
    assert e.value.code == q.E_POINTS
    with pytest.raises(q.QueryError):
        q.parse_agg_interval("5m", q.parse_range("1d", None, None, NOW))


def test_unknown_and_repeated_params() -> None:
    with pytest.raises(q.QueryError) as e:
        q.parse_query({"locaton": "DE"}, NOW)
    assert e.value.code == q.E_UNKNOWN_PARAM
    with pytest.raises(q.QueryError):
        q.parse_query([("location", "DE"), ("location", "FR")], NOW)
    with pytest.raises(q.QueryError):
        q.parse_query({"aggInterval": "1h"}, NOW)  # summary has no aggInterval
    assert q.parse_query({"aggInterval": "1h", "format": "csv"}, NOW, timeseries=True).format == "CSV"


def test_interval_start_weeks_start_monday() -> None:
    monday = 1725235200  # 2024-09-02, a Monday
    assert q.interval_start(monday + 3 * 86400 + 5, "1w") == monday
    assert q.interval_start(monday - 1, "1w") == monday - 7 * 86400
    assert q.interval_start(monday + 3725, "1h") == monday + 3600
    assert q.interval_start(monday + 86399, "1d") == monday


def test_percent_strings() -> None:
    assert q.percent(1, 3) == "33.333333"
    assert q.percent(1, 2) == "50"
    assert q.percent(0, 5) == "0"
    assert q.percent(0, 0) == "0"
    assert q.confidence_level(0) == 0 and q.confidence_level(150) == 3 and q.confidence_level(10**6) == 5
