"""Query parameters of the Radar-compatible API: parsing and validation, pure (no I/O, `now` injected).

Everything a request can get wrong is decided here, so the HTTP layer only maps `QueryError` to a 400
and the tests can pin the rules without a server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

BUCKET_S = 900
STAGES = ("post_syn", "post_ack", "post_psh", "later_in_flow", "no_match")
MAX_RANGE = timedelta(days=366)
MAX_POINTS = 5000
DEFAULT_RANGE = "7d"

# aggInterval: the Radar spelling -> (seconds, meta name). Weeks start on Monday (ISO), days at 00:00 UTC.
AGG_INTERVALS: dict[str, tuple[int, str]] = {
    "15m": (900, "FIFTEEN_MINUTES"),
    "1h": (3600, "ONE_HOUR"),
    "1d": (86400, "ONE_DAY"),
    "1w": (7 * 86400, "ONE_WEEK"),
}

# Error codes (Cloudflare-style numeric codes; the message says what to fix).
E_INVALID = 10001
E_UNKNOWN_PARAM = 10002
E_RANGE = 10003
E_POINTS = 10004
E_NOT_FOUND = 10404

_RANGE_RE = re.compile(r"^(\d{1,4})([hdw])$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_CC_RE = re.compile(r"^[A-Z]{2}$")
_ASN_RE = re.compile(r"^(?:AS)?(\d{1,10})$")


class QueryError(ValueError):
    """A bad request: becomes HTTP 400 with the Radar error body."""

    def __init__(self, message: str, code: int = E_INVALID) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """One `location` or `asn` parameter: included and excluded keys (`-` prefix excludes)."""

    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @property
    def given(self) -> bool:
        return bool(self.include or self.exclude)

    def accepts(self, key: str) -> bool:
        return (not self.include or key in self.include) and key not in self.exclude


@dataclass(frozen=True, slots=True)
class Filters:
    """Which rows a request aggregates; see `dimension` for the rule."""

    location: KeyFilter = field(default_factory=KeyFilter)
    asn: KeyFilter = field(default_factory=KeyFilter)

    @property
    def dimension(self) -> str:
        """no filter -> world; location -> country; asn -> asn; both -> country_asn (the rollup dimension)."""
        if self.location.given and self.asn.given:
            return "country_asn"
        if self.location.given:
            return "country"
        if self.asn.given:
            return "asn"
        return "world"

    @property
    def exclusion_only(self) -> bool:
        """True when the request is "the world minus some keys" of a single dimension."""
        dim = self.dimension
        kf = self.location if dim == "country" else self.asn if dim == "asn" else None
        return kf is not None and not kf.include and bool(kf.exclude)

    def accepts(self, key: str) -> bool:
        """Whether a row key of `self.dimension` is selected."""
        dim = self.dimension
        if dim == "world":
            return True
        if dim == "country":
            return self.location.accepts(key)
        if dim == "asn":
            return self.asn.accepts(key)
        cc, _, asn = key.partition(":")
        return self.location.accepts(cc) and self.asn.accepts(asn)


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def start_s(self) -> int:
        return int(self.start.timestamp())

    @property
    def end_s(self) -> int:
        return int(self.end.timestamp())


@dataclass(frozen=True, slots=True)
class Query:
    filters: Filters
    range: TimeRange
    format: str = "JSON"
    agg_interval: str | None = None  # timeseries only: a key of AGG_INTERVALS


def iso(dt: datetime) -> str:
    """Radar's timestamp spelling: UTC, seconds, trailing Z."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_s(ts: int) -> str:
    return iso(datetime.fromtimestamp(ts, UTC))


def _items(raw: str, name: str) -> list[str]:
    items = [p.strip() for p in raw.split(",")]
    if not raw.strip() or any(not p for p in items):
        raise QueryError(f"{name}: empty item in {raw!r}")
    return items


def parse_locations(raw: str | None) -> KeyFilter:
    """ISO 3166 alpha-2 codes, comma separated, `-DE` excludes; case-insensitive."""
    if raw is None:
        return KeyFilter()
    inc: set[str] = set()
    exc: set[str] = set()
    for item in _items(raw, "location"):
        neg = item.startswith("-")
        code = item[1:].upper() if neg else item.upper()
        if not _CC_RE.match(code):
            raise QueryError(f"location: {item!r} is not an ISO 3166 alpha-2 code (e.g. DE, -US)")
        (exc if neg else inc).add(code)
    return _key_filter(inc, exc, "location")


def parse_asns(raw: str | None) -> KeyFilter:
    """AS numbers, comma separated, optional `AS` prefix, `-3320` excludes."""
    if raw is None:
        return KeyFilter()
    inc: set[str] = set()
    exc: set[str] = set()
    for item in _items(raw, "asn"):
        neg = item.startswith("-")
        body = item[1:] if neg else item
        m = _ASN_RE.match(body.upper())
        if not m or int(m.group(1)) > 4294967295:
            raise QueryError(f"asn: {item!r} is not an AS number (e.g. 3320, AS3320, -174)")
        (exc if neg else inc).add(str(int(m.group(1))))
    return _key_filter(inc, exc, "asn")


def _key_filter(inc: set[str], exc: set[str], name: str) -> KeyFilter:
    if inc & exc:
        raise QueryError(f"{name}: {sorted(inc & exc)} both included and excluded")
    return KeyFilter(frozenset(inc), frozenset(exc))


def parse_datetime(raw: str, name: str) -> datetime:
    """ISO 8601; a naive time is UTC (Radar's convention)."""
    text = raw.strip()
    if not text or len(text) > 40:
        raise QueryError(f"{name}: {raw!r} is not an ISO 8601 date-time")
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise QueryError(f"{name}: {raw!r} is not an ISO 8601 date-time (e.g. 2024-09-01T00:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        dt = dt.astimezone(UTC)
        dt.timestamp()
    except (OverflowError, ValueError):
        raise QueryError(f"{name}: {raw!r} is out of range") from None
    if not 1970 <= dt.year <= 9998:
        raise QueryError(f"{name}: {raw!r} is out of range")
    return dt


def parse_date_range(raw: str) -> timedelta:
    m = _RANGE_RE.match(raw.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise QueryError(f"dateRange: {raw!r} is not a range like 1d, 7d, 4w, 12w or 24h")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_range(date_range: str | None, date_start: str | None, date_end: str | None, now: datetime) -> TimeRange:
    """dateRange counts back from `now`; dateStart/dateEnd are absolute; they cannot be mixed."""
    if date_range is not None and (date_start is not None or date_end is not None):
        raise QueryError("dateRange cannot be combined with dateStart/dateEnd")
    if date_start is None and date_end is None:
        span = parse_date_range(date_range if date_range is not None else DEFAULT_RANGE)
        if span > MAX_RANGE:
            raise QueryError(f"dateRange: {date_range!r} is longer than {MAX_RANGE.days} days", E_RANGE)
        return TimeRange(now - span, now)
    end = parse_datetime(date_end, "dateEnd") if date_end is not None else now
    start = parse_datetime(date_start, "dateStart") if date_start is not None else end - parse_date_range(DEFAULT_RANGE)
    if start >= end:
        raise QueryError("dateStart must be before dateEnd")
    if end - start > MAX_RANGE:
        raise QueryError(f"date range is longer than {MAX_RANGE.days} days", E_RANGE)
    return TimeRange(start, end)


def parse_format(raw: str | None) -> str:
    fmt = (raw or "JSON").upper()
    if fmt not in ("JSON", "CSV"):
        raise QueryError(f"format: {raw!r} is not JSON or CSV")
    return fmt


def auto_interval(r: TimeRange) -> str:
    """The finest interval that keeps a chart readable (Radar picks one too when none is given)."""
    span = r.end - r.start
    if span <= timedelta(days=3):
        return "15m"
    if span <= timedelta(days=31):
        return "1h"
    if span <= timedelta(days=190):
        return "1d"
    return "1w"


def parse_agg_interval(raw: str | None, r: TimeRange) -> str:
    agg = auto_interval(r) if raw is None else raw.strip().lower()
    if agg not in AGG_INTERVALS:
        raise QueryError(f"aggInterval: {raw!r} is not one of {', '.join(AGG_INTERVALS)}")
    points = (r.end_s - r.start_s) / AGG_INTERVALS[agg][0]
    if points > MAX_POINTS:
        raise QueryError(f"aggInterval {agg} over this range gives {int(points)} points (max {MAX_POINTS}); "
                         "use a longer aggInterval or a shorter range", E_POINTS)
    return agg


def check_params(params: Mapping[str, str] | Sequence[tuple[str, str]], allowed: Sequence[str]) -> dict[str, str]:
    """Unknown and repeated parameters are errors: a typo must not silently widen a query."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    out: dict[str, str] = {}
    for name, value in pairs:
        if name not in allowed:
            raise QueryError(f"unknown parameter {name!r} (allowed: {', '.join(allowed)})", E_UNKNOWN_PARAM)
        if name in out:
            raise QueryError(f"parameter {name!r} given more than once; use a comma list")
        out[name] = value
    return out


FILTER_PARAMS = ("location", "asn", "dateRange", "dateStart", "dateEnd", "format")
SUMMARY_PARAMS = FILTER_PARAMS
TIMESERIES_PARAMS = (*FILTER_PARAMS, "aggInterval")


def parse_query(params: Mapping[str, str] | Sequence[tuple[str, str]], now: datetime, *,
                timeseries: bool = False) -> Query:
    """The filters, range, format (and interval) of a summary or timeseries request."""
    p = check_params(params, TIMESERIES_PARAMS if timeseries else SUMMARY_PARAMS)
    r = parse_range(p.get("dateRange"), p.get("dateStart"), p.get("dateEnd"), now)
    filters = Filters(parse_locations(p.get("location")), parse_asns(p.get("asn")))
    agg = parse_agg_interval(p.get("aggInterval"), r) if timeseries else None
    return Query(filters, r, parse_format(p.get("format")), agg)


def parse_int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    text = raw.strip()
    if not text.isdigit() or len(text) > 12 or not lo <= int(text) <= hi:
        raise QueryError(f"{name}: {raw!r} is not an integer in {lo}..{hi}")
    return int(text)


def interval_start(ts: int, agg: str) -> int:
    """The start of the aggInterval slot holding `ts` (UTC; weeks start on Monday)."""
    size = AGG_INTERVALS[agg][0]
    if agg == "1w":
        monday_epoch = 4 * 86400  # 1970-01-05 was a Monday
        return (ts - monday_epoch) // size * size + monday_epoch
    return ts // size * size


def percent(count: int, total: int) -> str:
    """A share as Radar spells it: a decimal string, at most 6 decimals, no trailing zeros."""
    if total <= 0:
        return "0"
    text = f"{100.0 * count / total:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def confidence_level(total: int) -> int:
    """Radar's 0..5 confidence, here from the number of connections behind the number (0 = no data)."""
    for level, need in ((5, 10000), (4, 1000), (3, 100), (2, 10), (1, 1)):
        if total >= need:
            return level
    return 0
