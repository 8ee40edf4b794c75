"""Query parameters of the Radar-compatible API: parsing and validation, pure (no I/O, `now` injected).

Everything a request can get wrong is decided here, so the HTTP layer only maps `QueryError` to a 400
and the tests can pin the rules without a server. The rules (Radar's where it documents them, ours where
it does not) are listed in docs/api.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rstscope.api.continents import CONTINENTS, continent_of, countries_in
from rstscope.core.classify import STAGES as STAGES  # defined in core; also Radar's field names
from rstscope.core.rollup import BUCKET_S as BUCKET_S
from rstscope.core.rollup import TCP, TRANSPORTS, share
from rstscope.insights.model import CLOSED, OPEN

BUCKET = timedelta(seconds=BUCKET_S)
MAX_RANGE = timedelta(days=366)  # dateStart..dateEnd
MAX_POINTS = 5000
MAX_SERIES = 10
MAX_NAME = 100
DEFAULT_RANGE = "7d"
# dateRange: Radar takes up to 364d or 52w; hours (rstscope's addition) up to the same span.
_RANGE_LIMITS = {"h": 364 * 24, "d": 364, "w": 52}

# aggInterval: the Radar spelling -> (seconds, meta name). Weeks start on Monday (ISO), days at 00:00 UTC.
AGG_INTERVALS: dict[str, tuple[int, str]] = {
    "15m": (BUCKET_S, "FIFTEEN_MINUTES"),
    "1h": (3600, "ONE_HOUR"),
    "1d": (86400, "ONE_DAY"),
    "1w": (7 * 86400, "ONE_WEEK"),
}

# Error codes: Radar's (developers.cloudflare.com/radar/get-started/error-codes): every bad parameter is an
# "Input Validation Error" (2001, HTTP 400); the message says which parameter and what to fix.
E_INVALID = 2001
E_UNKNOWN_PARAM = E_INVALID
E_RANGE = E_INVALID
E_POINTS = E_INVALID
E_NOT_FOUND = 7003

_RANGE_RE = re.compile(r"^(\d{1,4})([hdw])(control)?$")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_CC_RE = re.compile(r"^[A-Z]{2}$")
_ASN_RE = re.compile(r"^(?:AS)?(\d{1,10})$")
_SERIES_KEY_RE = re.compile(r"^(?:summary|serie)_\d+$")


class QueryError(ValueError):
    """A bad request: becomes HTTP 400 with the Radar error body."""

    def __init__(self, message: str, code: int = E_INVALID) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """One `location`, `continent` or `asn` parameter: included and excluded keys (`-` prefix excludes)."""

    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @property
    def given(self) -> bool:
        return bool(self.include or self.exclude)

    def accepts(self, key: str) -> bool:
        return (not self.include or key in self.include) and key not in self.exclude


@dataclass(frozen=True, slots=True)
class Filters:
    """Which rows a request aggregates; see `dimension` for the rule. `continent` filters countries;
    `transport` selects the rows of one transport (TCP unless asked: Radar's dataset is TCP)."""

    location: KeyFilter = field(default_factory=KeyFilter)
    asn: KeyFilter = field(default_factory=KeyFilter)
    continent: KeyFilter = field(default_factory=KeyFilter)
    transport: str = TCP

    @property
    def by_country(self) -> bool:
        return self.location.given or self.continent.given

    @property
    def dimension(self) -> str:
        """no filter -> world; location/continent -> country; asn -> asn; both -> country_asn."""
        if self.by_country and self.asn.given:
            return "country_asn"
        if self.by_country:
            return "country"
        if self.asn.given:
            return "asn"
        return "world"

    def country_sets(self) -> tuple[frozenset[str] | None, frozenset[str]]:
        """(countries to sum, or None for "all but the excluded"; countries excluded) of location + continent."""
        include: frozenset[str] | None = None
        if self.location.include:
            include = self.location.include
        if self.continent.include:
            members = countries_in(self.continent.include)
            include = members if include is None else include & members
        exclude = self.location.exclude | countries_in(self.continent.exclude)
        if include is not None:
            return include - exclude, frozenset()
        return None, exclude

    @property
    def exclusion_only(self) -> bool:
        """True when the request is "the world minus some keys" of a single dimension."""
        dim = self.dimension
        if dim == "country":
            include, exclude = self.country_sets()
            return include is None and bool(exclude)
        if dim == "asn":
            return not self.asn.include and bool(self.asn.exclude)
        return False

    def accepts_country(self, cc: str) -> bool:
        return self.location.accepts(cc) and self.continent.accepts(continent_of(cc))

    def selects(self, dimension: str, key: str) -> bool:
        """Whether a network is exactly one the filters aggregate: a row of `self.dimension` they accept
        (an alert on it annotates the series)."""
        return dimension == self.dimension and self.accepts(key)

    def covers(self, dimension: str, key: str) -> bool:
        """Whether a network lies within the filters (alert and outlier lists): no filter covers every
        network; a location/continent filter covers the country and country+ASN networks of the countries it
        accepts; an asn filter the AS and country+ASN networks of the ASes it accepts; both, the country+ASN
        networks both accept."""
        if dimension == "world":
            return not self.by_country and not self.asn.given
        cc, asn = ("", key) if dimension == "asn" else key.partition(":")[::2]
        if self.by_country and (dimension == "asn" or not self.accepts_country(cc)):
            return False
        return not self.asn.given or (dimension != "country" and self.asn.accepts(asn))

    def accepts(self, key: str) -> bool:
        """Whether a row key of `self.dimension` is selected."""
        dim = self.dimension
        if dim == "world":
            return True
        if dim == "country":
            return self.accepts_country(key)
        if dim == "asn":
            return self.asn.accepts(key)
        cc, _, asn = key.partition(":")
        return self.accepts_country(cc) and self.asn.accepts(asn)


def floor_bucket(dt: datetime) -> datetime:
    """Radar floors every date to 15 minutes."""
    ts = int(dt.timestamp())
    return datetime.fromtimestamp(ts - ts % BUCKET_S, UTC)


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A range of 15-minute buckets. `start` and `end` are what meta.dateRange reports.

    Relative ranges (dateRange) are [start, end): they end at the current bucket's start. Absolute
    ranges (dateStart/dateEnd) include the bucket that starts at `end` (Radar: "dateEnd inclusive").
    """

    start: datetime
    end: datetime
    end_inclusive: bool = False

    @property
    def stop(self) -> datetime:
        """The exclusive end of the data summed."""
        return self.end + BUCKET if self.end_inclusive else self.end

    @property
    def duration(self) -> timedelta:
        """What must agree between series (Radar: "every series must resolve to the same duration")."""
        return self.end - self.start

    @property
    def start_s(self) -> int:
        return int(self.start.timestamp())

    @property
    def end_s(self) -> int:
        return int(self.end.timestamp())

    @property
    def stop_s(self) -> int:
        return int(self.stop.timestamp())


@dataclass(frozen=True, slots=True)
class Query:
    """One series (the rstscope extensions, and each series of a Radar request)."""

    filters: Filters
    range: TimeRange
    format: str = "JSON"
    agg_interval: str | None = None  # timeseries only: a key of AGG_INTERVALS


@dataclass(frozen=True, slots=True)
class Series:
    key: str  # where it goes in `result`: summary_i / serie_i, or the i-th name
    filters: Filters
    range: TimeRange


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """A Radar request: one or more series matched by position, one format and interval for all."""

    series: tuple[Series, ...]
    format: str = "JSON"
    agg_interval: str | None = None
    named: bool = False


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
    return _signed_filter(raw, "location", lambda body: body.upper() if _CC_RE.match(body.upper()) else None,
                          "an ISO 3166 alpha-2 code (e.g. DE, -US)")


def parse_continents(raw: str | None) -> KeyFilter:
    """Radar's continent codes (AF, AN, AS, EU, NA, OC, SA), comma separated, `-EU` excludes."""
    return _signed_filter(raw, "continent", lambda body: body.upper() if body.upper() in CONTINENTS else None,
                          f"one of {', '.join(CONTINENTS)} (e.g. EU, -NA)")


def parse_asns(raw: str | None) -> KeyFilter:
    """AS numbers, comma separated, optional `AS` prefix, `-3320` excludes."""

    def asn(body: str) -> str | None:
        m = _ASN_RE.match(body.upper())
        return str(int(m.group(1))) if m and int(m.group(1)) <= 4294967295 else None

    return _signed_filter(raw, "asn", asn, "an AS number (e.g. 3320, AS3320, -174)")


def _signed_filter(raw: str | None, name: str, key: Callable[[str], str | None], what: str) -> KeyFilter:
    """A comma-separated list of values, each optionally negated with `-`: ``key`` turns a value into
    its key (None: not a valid value, refused as not being ``what``)."""
    if raw is None:
        return KeyFilter()
    inc: set[str] = set()
    exc: set[str] = set()
    for item in _items(raw, name):
        neg = item.startswith("-")
        k = key(item[1:] if neg else item)
        if k is None:
            raise QueryError(f"{name}: {item!r} is not {what}")
        (exc if neg else inc).add(k)
    return _key_filter(inc, exc, name)


def _key_filter(inc: set[str], exc: set[str], name: str) -> KeyFilter:
    if inc & exc:
        raise QueryError(f"{name}: {sorted(inc & exc)} both included and excluded")
    return KeyFilter(frozenset(inc), frozenset(exc))


def parse_transport(raw: str | None) -> str:
    """`tcp` (the default) or `quic`, case-insensitive."""
    return _choice(raw, "transport", TRANSPORTS) or TCP


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


def parse_relative(raw: str) -> tuple[timedelta, bool]:
    """`7d`, `4w`, `24h`, `7dControl` ... -> (span, control). Case-insensitive."""
    m = _RANGE_RE.match(raw.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise QueryError(f"dateRange: {raw!r} is not a range like 1d, 7d, 4w, 52w or 24h "
                         "(append 'control' for the period before, e.g. 7dControl)")
    n, unit = int(m.group(1)), m.group(2)
    if n > _RANGE_LIMITS[unit]:
        raise QueryError(f"dateRange: {raw!r} is longer than {_RANGE_LIMITS[unit]}{unit} (364 days)", E_RANGE)
    return n * _UNITS[unit], m.group(3) is not None


def parse_date_range(raw: str) -> timedelta:
    return parse_relative(raw)[0]


def control_shift(span: timedelta) -> timedelta:
    """How far a control range lies back: the span rounded up to whole weeks (weekday-aligned, no overlap)."""
    week = timedelta(weeks=1)
    return -(-span // week) * week


def parse_range(date_range: str | None, date_start: str | None, date_end: str | None, now: datetime) -> TimeRange:
    """dateRange counts back from now (floored to 15 minutes); dateStart/dateEnd are absolute, floored to
    15 minutes, dateEnd inclusive; the two forms cannot be mixed in one series."""
    if date_range is not None and (date_start is not None or date_end is not None):
        raise QueryError("dateRange cannot be combined with dateStart/dateEnd")
    now15 = floor_bucket(now)
    if date_start is None and date_end is None:
        span, control = parse_relative(date_range if date_range is not None else DEFAULT_RANGE)
        end = now15 - control_shift(span) if control else now15
        return TimeRange(end - span, end)
    end = floor_bucket(parse_datetime(date_end, "dateEnd")) if date_end is not None else now15
    if date_start is not None:
        start = floor_bucket(parse_datetime(date_start, "dateStart"))
    else:
        start = end - parse_date_range(DEFAULT_RANGE)
    if start > end:
        raise QueryError("dateStart must not be after dateEnd")
    if end - start > MAX_RANGE:
        raise QueryError(f"date range is longer than {MAX_RANGE.days} days", E_RANGE)
    return TimeRange(start, end, end_inclusive=True)


def parse_format(raw: str | None) -> str:
    fmt = (raw or "JSON").upper()
    if fmt not in ("JSON", "CSV"):
        raise QueryError(f"format: {raw!r} is not JSON or CSV")
    return fmt


def auto_interval(r: TimeRange) -> str:
    """Radar's defaults: 15 minutes for a day or so, one day beyond a month; one hour in between."""
    span = r.stop - r.start
    if span <= timedelta(days=3):
        return "15m"
    if span <= timedelta(days=31):
        return "1h"
    return "1d"


def slot_starts(r: TimeRange, agg: str) -> range:
    """The start of every aggInterval slot that overlaps the range (timestamps of a timeseries)."""
    size = AGG_INTERVALS[agg][0]
    if r.stop_s <= r.start_s:
        return range(0)
    return range(interval_start(r.start_s, agg), interval_start(r.stop_s - 1, agg) + 1, size)


def parse_agg_interval(raw: str | None, r: TimeRange) -> str:
    agg = auto_interval(r) if raw is None else raw.strip().lower()
    if agg not in AGG_INTERVALS:
        raise QueryError(f"aggInterval: {raw!r} is not one of {', '.join(AGG_INTERVALS)}")
    points = len(slot_starts(r, agg))
    if points > MAX_POINTS:
        raise QueryError(f"aggInterval {agg} over this range gives {points} points (max {MAX_POINTS}); "
                         "use a longer aggInterval or a shorter range", E_POINTS)
    return agg


def _pairs(params: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(params.items()) if isinstance(params, Mapping) else list(params)


def check_params(params: Mapping[str, str] | Sequence[tuple[str, str]], allowed: Sequence[str]) -> dict[str, str]:
    """Unknown and repeated parameters are errors: a typo must not silently widen a query."""
    out: dict[str, str] = {}
    for name, value in _pairs(params):
        if name not in allowed:
            raise QueryError(f"unknown parameter {name!r} (allowed: {', '.join(allowed)})", E_UNKNOWN_PARAM)
        if name in out:
            raise QueryError(f"parameter {name!r} given more than once; use a comma list")
        out[name] = value
    return out


# `transport` (rstscope's, last) selects the rows of one transport everywhere rows are read.
FILTER_PARAMS = ("location", "continent", "asn", "dateRange", "dateStart", "dateEnd", "format", "transport")
SUMMARY_PARAMS = FILTER_PARAMS
TIMESERIES_PARAMS = (*FILTER_PARAMS, "aggInterval")
# Radar: every parameter is an array (one value per series) except format and aggInterval.
ARRAY_PARAMS = ("name", "location", "continent", "asn", "dateRange", "dateStart", "dateEnd", "transport")
SCALAR_PARAMS = ("format", "aggInterval")


ALERT_PARAMS = (*FILTER_PARAMS, "stage", "state", "limit")
OUTLIER_PARAMS = (*FILTER_PARAMS, "dimension", "limit")
OUTLIER_DIMENSIONS = ("country_asn", "asn", "country")  # the first is the default
MAX_ALERTS = 1000


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """`GET /rstscope/alerts`: the alerts overlapping `range` on networks the filters cover."""

    filters: Filters
    range: TimeRange
    format: str = "JSON"
    stage: str | None = None
    state: str | None = None  # open | closed
    limit: int = 100


@dataclass(frozen=True, slots=True)
class OutlierQuery:
    """`GET /rstscope/outliers`: networks of `dimension` the filters cover, ranked against their peers."""

    filters: Filters
    range: TimeRange
    format: str = "JSON"
    dimension: str = OUTLIER_DIMENSIONS[0]
    limit: int = 20


def _choice(raw: str | None, name: str, choices: Sequence[str]) -> str | None:
    if raw is None:
        return None
    value = raw.strip().lower()
    if value not in choices:
        raise QueryError(f"{name}: {raw!r} is not one of {', '.join(choices)}")
    return value


def parse_alert_query(params: Mapping[str, str] | Sequence[tuple[str, str]], now: datetime) -> AlertQuery:
    p = check_params(params, ALERT_PARAMS)
    base = parse_query({k: v for k, v in p.items() if k in FILTER_PARAMS}, now)
    return AlertQuery(base.filters, base.range, base.format, _choice(p.get("stage"), "stage", STAGES),
                      _choice(p.get("state"), "state", (OPEN, CLOSED)),
                      parse_int(p.get("limit"), "limit", 100, 1, MAX_ALERTS))


def parse_outlier_query(params: Mapping[str, str] | Sequence[tuple[str, str]], now: datetime) -> OutlierQuery:
    p = check_params(params, OUTLIER_PARAMS)
    base = parse_query({k: v for k, v in p.items() if k in FILTER_PARAMS}, now)
    dim = _choice(p.get("dimension"), "dimension", OUTLIER_DIMENSIONS) or OUTLIER_DIMENSIONS[0]
    if dim == "asn" and base.filters.by_country:
        raise QueryError("location and continent do not apply to dimension=asn (use dimension=country_asn)")
    if dim == "country" and base.filters.asn.given:
        raise QueryError("asn does not apply to dimension=country (use dimension=country_asn)")
    return OutlierQuery(base.filters, base.range, base.format, dim, parse_int(p.get("limit"), "limit", 20, 1, 100))


def parse_filters(location: str | None, asn: str | None, continent: str | None = None,
                  transport: str | None = None) -> Filters:
    return Filters(parse_locations(location), parse_asns(asn), parse_continents(continent), parse_transport(transport))


def parse_query(params: Mapping[str, str] | Sequence[tuple[str, str]], now: datetime, *,
                timeseries: bool = False) -> Query:
    """One series (the rstscope extensions): the filters, range, format (and interval); no repeats."""
    p = check_params(params, TIMESERIES_PARAMS if timeseries else SUMMARY_PARAMS)
    r = parse_range(p.get("dateRange"), p.get("dateStart"), p.get("dateEnd"), now)
    filters = parse_filters(p.get("location"), p.get("asn"), p.get("continent"), p.get("transport"))
    agg = parse_agg_interval(p.get("aggInterval"), r) if timeseries else None
    return Query(filters, r, parse_format(p.get("format")), agg)


def _series_name(raw: str, i: int, prefix: str) -> str:
    name = raw.strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise QueryError(f"name: {raw!r} is not a series name (1 to {MAX_NAME} printable characters)")
    if name == "meta":
        raise QueryError("name: 'meta' is taken by the response's metadata")
    if _SERIES_KEY_RE.match(name) and name != f"{prefix}{i}":
        raise QueryError(f"name: {name!r} would be mistaken for another series' key ({prefix}N)")
    return name


def parse_series_query(params: Mapping[str, str] | Sequence[tuple[str, str]], now: datetime, *,
                       timeseries: bool = False) -> SeriesQuery:
    """A Radar request: repeated parameters ask for several series, matched by position.

    Series i takes the i-th value of each array parameter; a parameter given once applies to every
    series; an empty value means "not set" for that series. `name` labels the series (one per series,
    unique). All series must resolve to the same duration (Radar's rule).
    """
    allowed = (*ARRAY_PARAMS, *SCALAR_PARAMS) if timeseries else (*ARRAY_PARAMS, "format")
    values: dict[str, list[str]] = {}
    for name, value in _pairs(params):
        if name not in allowed:
            raise QueryError(f"unknown parameter {name!r} (allowed: {', '.join(allowed)})", E_UNKNOWN_PARAM)
        if name in SCALAR_PARAMS and name in values:
            raise QueryError(f"parameter {name!r} applies to every series: give it once")
        values.setdefault(name, []).append(value)
    n = max((len(v) for k, v in values.items() if k in ARRAY_PARAMS), default=1)
    if n > MAX_SERIES:
        raise QueryError(f"{n} series asked for (max {MAX_SERIES})")
    for k, v in values.items():
        if k in ARRAY_PARAMS and len(v) not in (1, n):
            raise QueryError(f"{k}: {len(v)} values for {n} series (give one value for all, or one per series)")
    names = values.get("name")
    if names is not None and len(names) != n:
        raise QueryError(f"name: {len(names)} names for {n} series (one per series)")
    prefix = "serie_" if timeseries else "summary_"

    def at(k: str, i: int) -> str | None:
        v = values.get(k)
        if v is None:
            return None
        item = v[i] if len(v) == n else v[0]
        return item if item.strip() else None

    series: list[Series] = []
    for i in range(n):
        where = f" (series {i})" if n > 1 else ""
        try:
            r = parse_range(at("dateRange", i), at("dateStart", i), at("dateEnd", i), now)
            filters = parse_filters(at("location", i), at("asn", i), at("continent", i), at("transport", i))
            key = _series_name(names[i], i, prefix) if names is not None else f"{prefix}{i}"
        except QueryError as e:
            raise QueryError(e.message + where, e.code) from None
        series.append(Series(key, filters, r))
    keys = [s.key for s in series]
    if len(set(keys)) != len(keys):
        raise QueryError(f"name: series names must differ ({', '.join(keys)})")
    durations = {s.range.duration for s in series}
    if len(durations) > 1:
        spans = ", ".join(f"{s.key}: {span_text(s.range.duration)}" for s in series)
        raise QueryError(f"every series must cover the same duration (after flooring to 15 minutes): {spans}")
    agg = None
    if timeseries:
        raw = values.get("aggInterval")
        agg = parse_agg_interval(raw[0] if raw else None, series[0].range)
        for s in series[1:]:
            parse_agg_interval(agg, s.range)
    fmt = values.get("format")
    return SeriesQuery(tuple(series), parse_format(fmt[0] if fmt else None), agg, names is not None)


def span_text(td: timedelta) -> str:
    """7d, 1d12h, 5h15m, 0m."""
    rest = int(td.total_seconds())
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    return "".join(f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (rest // 60, "m")) if v) or "0m"


def parse_int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    text = raw.strip()
    # isascii: str.isdigit() also takes "²" and other digits int() refuses (found by the schema fuzzer)
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or not lo <= int(text) <= hi:
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
    text = f"{share(count, total):.6f}".rstrip("0").rstrip(".")
    return text or "0"


def confidence_level(total: int) -> int:
    """Radar's 0..5 confidence, here from the number of connections behind the number (0 = no data)."""
    for level, need in ((5, 10000), (4, 1000), (3, 100), (2, 10), (1, 1)):
        if total >= need:
            return level
    return 0
