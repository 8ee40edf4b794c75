"""The HTTP app: Cloudflare Radar's "TCP resets and timeouts" endpoints over the rollup store (one or more
series per request, as Radar's official clients send them), the rstscope extensions Radar lacks, and the
dashboard. Read-only; parameters are validated in `query.py`; the rules are in docs/api.md.

Shares are always computed here from summed counts (across buckets, locations and ASes), never by
averaging the shares stored in rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rstscope import __version__
from rstscope.api import query as q
from rstscope.api.store import Store
from rstscope.config import OutlierParams
from rstscope.core.classify import SIGNATURES, TAGS
from rstscope.core.rollup import TCP, TRANSPORTS, Cell
from rstscope.insights.model import Alert
from rstscope.insights.outliers import rank_outliers
from rstscope.names import as_label, country_label
from rstscope.report import STAGE_LABELS

STATIC = Path(__file__).parent / "static"
Now = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- response models (OpenAPI)

class ErrorItem(BaseModel):
    code: int
    message: str


class ErrorBody(BaseModel):
    success: bool = False
    errors: list[ErrorItem]
    result: dict[str, Any]


class DateRange(BaseModel):
    startTime: str
    endTime: str = Field(description="relative ranges: exclusive (the current bucket's start); dateStart/dateEnd: "
                                     "the floored dateEnd, whose 15-minute bucket is included")


class Annotation(BaseModel):
    """The fields Radar's annotations have (the official clients require all but tags)."""

    dataSource: str = Field(description="CONNECTION_ANOMALY (this dataset)")
    description: str
    startDate: str
    endDate: str
    eventType: str = Field(description="PIPELINE (no data: outside the store's span), GENERAL (a caveat) or "
                                       "TRAFFIC_ANOMALY (a change alert on the series' network)")
    isInstantaneous: bool
    linkedUrl: str
    tags: list[str] | None = None


class ConfidenceInfo(BaseModel):
    level: int = Field(description="0 (no data) .. 5 (>= 10000 connections behind the number); with several "
                                   "series, the lowest")
    annotations: list[Annotation]


class Unit(BaseModel):
    name: str
    value: str


class Meta(BaseModel):
    dateRange: list[DateRange] = Field(description="one per series, in order")
    lastUpdated: str
    normalization: str
    confidenceInfo: ConfidenceInfo
    units: list[Unit]


class TimeseriesMeta(Meta):
    aggInterval: str


class StageShares(BaseModel):
    post_syn: str
    post_ack: str
    post_psh: str
    later_in_flow: str
    no_match: str


class Serie(BaseModel):
    timestamps: list[str]
    post_syn: list[str]
    post_ack: list[str]
    post_psh: list[str]
    later_in_flow: list[str]
    no_match: list[str]


for _model in (StageShares, Serie):  # spelled out for the OpenAPI schema; must follow core's STAGES
    if tuple(f for f in _model.model_fields if f != "timestamps") != q.STAGES:
        raise RuntimeError(f"{_model.__name__} does not list the stages {q.STAGES} in order")


class SummaryResult(BaseModel):
    """`summary_0`, `summary_1` ... or the series' names (then `summary_0` is also the first series)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, StageShares] = Field(init=False)
    meta: Meta
    summary_0: StageShares


class SummaryBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: SummaryResult


class TimeseriesResult(BaseModel):
    """`serie_0`, `serie_1` ... or the series' names (then `serie_0` is also the first series)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Serie] = Field(init=False)
    meta: TimeseriesMeta
    serie_0: Serie


class TimeseriesBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: TimeseriesResult


class BreakdownItem(BaseModel):
    name: str
    count: int
    share: str = Field(description="percent of all connections (tags overlap, so they need not sum to 100)")
    stage: str | None = None


class BreakdownMeta(Meta):
    connections: int


class BreakdownResult(BaseModel):
    meta: BreakdownMeta
    breakdown_0: list[BreakdownItem]


class BreakdownBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: BreakdownResult


class TopItem(BaseModel):
    """Radar's top-list item (`clientCountryAlpha2` + `clientCountryName`, or `clientASN` + `clientASName`)
    and what rstscope adds (connections, per-stage shares)."""

    clientCountryAlpha2: str | None = None
    clientCountryName: str | None = Field(None, description="English short name (ISO 3166, Debian iso-codes); "
                                                             "`Unknown` for XX")
    clientASN: int | None = None
    clientASName: str | None = Field(None, description="the AS's organisation from the ASN database (most recent "
                                                       "seen); `Unknown` for AS 0, empty when the database had none")
    value: str = Field(description="anomaly share: 100 - no_match share, percent")
    connections: int
    shares: StageShares


class TopMeta(BaseModel):
    dateRange: list[DateRange]
    lastUpdated: str
    normalization: str
    units: list[Unit]
    minConnections: int


class TopResult(BaseModel):
    meta: TopMeta
    top_0: list[TopItem]


class TopBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: TopResult


class MetaKey(BaseModel):
    key: str
    name: str = Field(description="country: English short name; AS: organisation (empty if unknown); "
                                  "`Unknown` for XX and AS 0")
    connections: int


class DataMeta(BaseModel):
    dataStart: str | None
    dataEnd: str | None
    rows: int
    bucketSeconds: int
    stages: list[str] = Field(description="the stages, in order: the field names of shares and series")
    maxRangeDays: int
    maxPoints: int
    connectionsExposed: bool
    locations: list[MetaKey]
    ases: list[MetaKey]
    version: str
    transport: str = Field(description="the transport this answer is about (`transport` parameter, default tcp)")
    transports: list[str] = Field(description="the transports the store has rows of")


class DataMetaBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: DataMeta


class AlertEvidenceModel(BaseModel):
    """The counts an alert rests on (rstscope.insights.model.AlertEvidence)."""

    connections: int = Field(description="connections of the network over the alert's units")
    stage_connections: int = Field(description="of them, in the alert's stage")
    baseline_connections: int = Field(description="connections of the network in the baseline units")
    baseline_stage_connections: int = Field(description="of them, in the alert's stage")
    baseline_days: int = Field(description="previous days the baseline was made of")
    units: int = Field(description="units (alerts.unit_s of the topology) the alert covers")


class AlertModel(BaseModel):
    """A wire alert (docs/wire-formats.md): one network's stage share moved away from its baseline."""

    id: str = Field(description="upsert identity: a later version of an id replaces the earlier")
    dimension: str = Field(description="world | country | asn | country_asn")
    key: str = Field(description='the network: "" (world), "MX", "8151", "MX:8151"')
    stage: str
    start: int = Field(description="unix seconds: start of the first unit that departed")
    end: int | None = Field(description="unix seconds: end of the last unit that departed; null while open")
    state: str = Field(description="open | closed")
    direction: str = Field(description="rise | fall")
    observed_share: float = Field(description="percent: the stage's share over the alert")
    baseline_share: float = Field(description="percent: the baseline median share at the same time of day")
    size_pp: float = Field(description="observed_share - baseline_share, share points (signed)")
    score: float = Field(description="the largest robust z of the alert's units")
    evidence: AlertEvidenceModel
    name: str = Field(description="display name of the network, when known")
    recurring: bool = Field(description="the same change at the same time of day on several previous days")
    period_s: int | None = Field(description="recurring alerts: the period (86400: daily)")
    v: int = Field(description="wire format version (1)")


class AlertsMeta(BaseModel):
    dateRange: list[DateRange]
    lastUpdated: str
    count: int = Field(description="alerts listed (at most `limit`)")
    limit: int


class AlertsResult(BaseModel):
    meta: AlertsMeta
    alerts: list[AlertModel] = Field(description="newest first")


class AlertsBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: AlertsResult


class OutlierModel(BaseModel):
    """One network whose stage profile departs from its peers' (rstscope.insights.model.Outlier)."""

    dimension: str = Field(description="asn | country_asn | country")
    key: str
    peer: str = Field(description='what it is compared with: "country:MX" or "world"')
    connections: int
    peer_connections: int = Field(description="the peers' connections, the network's own excluded")
    distance: float = Field(description="total variation distance between the stage profiles, share points")
    confidence: float = Field(description="0..1: how sure that the profiles differ, given the counts")
    stage: str = Field(description="the stage that departs most")
    share: float = Field(description="percent: that stage's share in the network")
    peer_share: float = Field(description="percent: that stage's share among the peers")
    shares: dict[str, float]
    peer_shares: dict[str, float]
    name: str


class OutliersMeta(BaseModel):
    dateRange: list[DateRange]
    lastUpdated: str
    dimension: str
    minConnections: int = Field(description="networks with fewer connections are not ranked (outliers: section)")
    minConfidence: float = Field(description="departures less certain than this are not listed")


class OutliersResult(BaseModel):
    meta: OutliersMeta
    outliers: list[OutlierModel] = Field(description="largest distance first")


class OutliersBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: OutliersResult


# ---------------------------------------------------------------- pure builders

def stage_shares(agg: Cell) -> dict[str, str]:
    total = agg.total
    return {s: q.percent(agg.counts[s], total) for s in q.STAGES}


def sum_aggs(aggs: Iterable[Cell]) -> Cell:
    out = Cell()
    for a in aggs:
        out.merge(a)
    return out


DIMENSION_OF = {"locations": "country", "ases": "asn"}  # top-list / meta kind -> rollup dimension
MAX_META_KEYS = 500  # /rstscope/meta lists the largest locations and ASes, not every one of a long capture
UNITS = [{"name": "*", "value": "connections"}]  # every value is a percentage of connections
DATA_SOURCE = "CONNECTION_ANOMALY"  # Radar's annotation data source for this dataset
ZEROS = dict.fromkeys(q.STAGES, "0")
MAX_ALERT_NOTES = 100  # alert annotations per series at most (the newest)
# (transport, breakdown) -> the names listed even at zero: TCP's SPEC tags and the paper's signatures. QUIC
# has no signatures, and its tags (docs/quic.md) are listed as they occur.
VOCABULARY: dict[tuple[str, str], Sequence[str]] = {(TCP, "tags"): TAGS, (TCP, "signatures"): SIGNATURES}
Span = tuple[int, int] | None  # the store's data: first bucket start, last bucket end (None: empty)
Spans = Mapping[str, Span]  # transport -> its span (every transport a request reads)


def base_meta(ranges: Sequence[q.TimeRange], last_updated: str, level: int,
              annotations: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "dateRange": [{"startTime": q.iso(r.start), "endTime": q.iso(r.end)} for r in ranges],
        "lastUpdated": last_updated,
        "normalization": "PERCENTAGE",
        "confidenceInfo": {"level": level, "annotations": list(annotations)},
        "units": [dict(u) for u in UNITS],
    }


def network_label(dimension: str, key: str, name: str = "") -> str:
    """How an alert or outlier names its network: "world", "MX", "AS8151", "AS8151 in MX" (+ name)."""
    if dimension == "world":
        return "world"
    if dimension == "country":
        text = key
    elif dimension == "asn":
        text = f"AS{key}"
    else:
        cc, _, asn = key.partition(":")
        text = f"AS{asn} in {cc}"
    return f"{text} ({name})" if name else text


def network_params(dimension: str, key: str) -> dict[str, str]:
    """The API parameters that select a network (location and/or asn)."""
    if dimension == "country":
        return {"location": key}
    if dimension == "asn":
        return {"asn": key}
    if dimension == "country_asn":
        cc, _, asn = key.partition(":")
        return {"location": cc, "asn": asn}
    return {}


def alert_description(a: Alert) -> str:
    """One line for a reader: network, stage, size, baseline, recurring, state."""
    verb = "rose" if a.direction == "rise" else "fell"
    text = (f"alert {a.id}: {STAGE_LABELS.get(a.stage, a.stage)} share of {network_label(a.dimension, a.key, a.name)} "
            f"{verb} to {a.observed_share:.1f}% from a baseline of {a.baseline_share:.1f}% ({a.size_pp:+.1f} pp, "
            f"{a.evidence.connections} connections)")
    if a.recurring:
        text += f", recurring every {a.period_s or 86400}s" if a.period_s != 86400 else ", recurring daily"
    return text + ("; open" if a.end is None else "")


def alert_annotation(a: Alert, r: q.TimeRange, alerts_url: str) -> dict[str, Any]:
    """A Radar annotation (eventType TRAFFIC_ANOMALY) for the part of the series' range an alert covers;
    linkedUrl asks /rstscope/alerts for it."""
    start = max(a.start, r.start_s)
    end = min(r.stop_s if a.end is None else a.end, r.stop_s)
    until = r.stop_s if a.end is None else a.end  # the alert's own range (an empty one is a 400)
    params = {**network_params(a.dimension, a.key), "stage": a.stage, "dateStart": q.iso_s(a.start),
              "dateEnd": q.iso_s(max(a.start + 1, until))}
    qs = "&".join(f"{k}={v}" for k, v in params.items())
    tags = ["alert", a.stage, a.direction, *(["recurring"] if a.recurring else []), a.state]
    return {"dataSource": DATA_SOURCE, "description": alert_description(a), "startDate": q.iso_s(start),
            "endDate": q.iso_s(max(start, end)), "eventType": "TRAFFIC_ANOMALY", "isInstantaneous": False,
            "linkedUrl": f"{alerts_url}?{qs}", "tags": tags}


def series_annotations(series: q.Series, buckets: dict[int, Cell], spans: Spans, link: str,
                       alerts: Sequence[Alert] = (), alerts_url: str = "") -> list[dict[str, Any]]:
    """What a reader of these numbers must know: parts of the range without data of its transport
    (PIPELINE), the Post-SYN caveat for numbers of one location or AS (GENERAL), and the change alerts on
    the series' network that overlap its range (TRAFFIC_ANOMALY, oldest first)."""
    r = series.range
    span = spans[series.filters.transport]
    out: list[dict[str, Any]] = []

    def note(start: int, end: int, event: str, description: str, tags: list[str]) -> None:
        out.append({"dataSource": DATA_SOURCE, "description": description, "startDate": q.iso_s(start),
                    "endDate": q.iso_s(end), "eventType": event, "isInstantaneous": False, "linkedUrl": link,
                    "tags": tags})

    if span is None:
        note(r.start_s, r.stop_s, "PIPELINE", "no data: the store is empty", ["no_data"])
    else:
        held = f"the store holds data from {q.iso_s(span[0])} to {q.iso_s(span[1])}"
        if r.start_s < span[0]:
            note(r.start_s, min(r.stop_s, span[0]), "PIPELINE", f"no data before {q.iso_s(span[0])}: {held}",
                 ["no_data"])
        if r.stop_s > span[1]:
            note(max(r.start_s, span[1]), r.stop_s, "PIPELINE", f"no data after {q.iso_s(span[1])}: {held}",
                 ["no_data"])
    unreliable = sum(a.post_syn_geo_unreliable for a in buckets.values())
    if unreliable and series.filters.dimension != "world":
        note(r.start_s, r.stop_s, "GENERAL",
             f"Post-SYN ({series.key}): {unreliable} of these connections ended after their SYN alone; the source "
             "address of a lone SYN may be spoofed, so their location and AS are unreliable",
             ["post_syn", "geolocation"])
    for a in sorted(alerts, key=lambda a: (a.start, a.id)):
        out.append(alert_annotation(a, r, alerts_url))
    return out


AlertsOf = Callable[[q.Series], Sequence[Alert]]


def series_meta(parts: Sequence[tuple[q.Series, dict[int, Cell]]], last_updated: str, spans: Spans,
                link: str, alerts_of: AlertsOf | None = None, alerts_url: str = "") -> dict[str, Any]:
    """Meta of one or more series: a dateRange each, the lowest confidence, all annotations (once each)."""
    notes: list[dict[str, Any]] = []
    for s, buckets in parts:
        alerts = alerts_of(s) if alerts_of is not None else ()
        for n in series_annotations(s, buckets, spans, link, alerts, alerts_url):
            if n not in notes:
                notes.append(n)
    level = min(q.confidence_level(sum(a.total for a in buckets.values())) for _, buckets in parts)
    return base_meta([s.range for s, _ in parts], last_updated, level, notes)


def summary_results(parts: Sequence[tuple[q.Series, dict[int, Cell]]], last_updated: str, spans: Spans,
                    link: str, *, named: bool = False, alerts_of: AlertsOf | None = None,
                    alerts_url: str = "") -> dict[str, Any]:
    """meta + one share object per series, under its key (`summary_i` or its name)."""
    result: dict[str, Any] = {"meta": series_meta(parts, last_updated, spans, link, alerts_of, alerts_url)}
    for s, buckets in parts:
        result[s.key] = stage_shares(sum_aggs(buckets.values()))
    first = parts[0][0].key
    if named and first != "summary_0":
        result["summary_0"] = result[first]  # the official clients require summary_0
    return result


def serie(buckets: dict[int, Cell], r: q.TimeRange, agg_interval: str) -> dict[str, list[str]]:
    """Buckets summed per aggInterval slot; every slot of the range is listed, "0" where nothing was counted."""
    slots: dict[int, Cell] = {}
    for b, a in buckets.items():
        slots.setdefault(q.interval_start(b, agg_interval), Cell()).merge(a)
    out: dict[str, list[str]] = {"timestamps": [], **{s: [] for s in q.STAGES}}
    for t in q.slot_starts(r, agg_interval):
        slot = slots.get(t)
        out["timestamps"].append(q.iso_s(t))
        for stage, v in (stage_shares(slot) if slot is not None and slot.total > 0 else ZEROS).items():
            out[stage].append(v)
    return out


def timeseries_results(parts: Sequence[tuple[q.Series, dict[int, Cell]]], agg_interval: str, last_updated: str,
                       spans: Spans, link: str, *, named: bool = False, alerts_of: AlertsOf | None = None,
                       alerts_url: str = "") -> dict[str, Any]:
    meta = series_meta(parts, last_updated, spans, link, alerts_of, alerts_url)
    meta["aggInterval"] = q.AGG_INTERVALS[agg_interval][1]
    result: dict[str, Any] = {"meta": meta}
    for s, buckets in parts:
        result[s.key] = serie(buckets, s.range, agg_interval)
    first = parts[0][0].key
    if named and first != "serie_0":
        result["serie_0"] = result[first]
    return result


def summary_csv(res: dict[str, Any], keys: Sequence[str], with_key: bool) -> str:
    if not with_key:
        return to_csv(q.STAGES, [[res[keys[0]][s] for s in q.STAGES]])
    return to_csv(("series", *q.STAGES), ([k, *(res[k][s] for s in q.STAGES)] for k in keys))


def timeseries_csv(res: dict[str, Any], keys: Sequence[str], with_key: bool) -> str:
    rows: list[list[str]] = []
    for k in keys:
        v = res[k]
        for i, t in enumerate(v["timestamps"]):
            rows.append([*([k] if with_key else []), t, *(v[s][i] for s in q.STAGES)])
    return to_csv((*(["series"] if with_key else []), "timestamps", *q.STAGES), rows)


def signature_stage(sig: str) -> str | None:
    for prefix, stage in (("PSH+ACK;Data→", "later_in_flow"), ("PSH+ACK→", "post_psh"),
                          ("SYN;ACK→", "post_ack"), ("SYN→", "post_syn")):
        if sig.startswith(prefix):
            return stage
    return None


def breakdown(counts: dict[str, int], known: Sequence[str], total: int, *, with_stage: bool) -> list[dict[str, Any]]:
    """Every known name (zeros included, so a client sees the full vocabulary), then unknown ones; by count."""
    names = list(known) + sorted(k for k in counts if k not in known)
    order = {n: i for i, n in enumerate(names)}
    items = []
    for n in sorted(names, key=lambda n: (-counts.get(n, 0), order[n])):
        item: dict[str, Any] = {"name": n, "count": counts.get(n, 0), "share": q.percent(counts.get(n, 0), total)}
        if with_stage:
            item["stage"] = signature_stage(n)
        items.append(item)
    return items


def key_label(kind: str, key: str, names: dict[str, str]) -> str:
    """The name shown for a location or AS key: the store's (from the rollup rows), else the package's table."""
    if kind == "locations":
        return names.get(key) or country_label(key)
    return as_label(key, names.get(key, ""))


def top_items(totals: dict[str, Cell], kind: str, min_connections: int, limit: int,
              names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Ranked by anomaly share (100 - no_match, from counts), then by connections; with Radar's name fields."""
    names = names or {}
    ranked = []
    for key, a in totals.items():
        total = a.total
        if total < max(1, min_connections):
            continue
        ranked.append((-a.anomalous / total, -total, key, a))
    ranked.sort(key=lambda t: (t[0], t[1], t[2]))
    out = []
    for _, _, key, a in ranked[:limit]:
        item: dict[str, Any] = {"value": q.percent(a.anomalous, a.total),
                                "connections": a.total, "shares": stage_shares(a)}
        if kind == "locations":
            item["clientCountryAlpha2"] = key
            item["clientCountryName"] = key_label(kind, key, names)
        else:
            item["clientASN"] = int(key)
            item["clientASName"] = key_label(kind, key, names)
        out.append(item)
    return out


ALERT_CSV = ("id", "dimension", "key", "name", "stage", "state", "direction", "start", "end", "observed_share",
             "baseline_share", "size_pp", "score", "recurring", "period_s", "connections", "stage_connections",
             "baseline_connections", "baseline_stage_connections", "baseline_days", "units")
OUTLIER_CSV = ("dimension", "key", "name", "peer", "stage", "share", "peer_share", "distance", "confidence",
               "connections", "peer_connections")


def alerts_csv(alerts: Sequence[dict[str, Any]]) -> str:
    """One row per wire alert; `end` and `period_s` are empty when null; the evidence's counts inline."""
    def cell(v: Any) -> Any:
        return "" if v is None else str(v).lower() if isinstance(v, bool) else v

    return to_csv(ALERT_CSV, ([cell({**a, **a["evidence"]}[c]) for c in ALERT_CSV] for a in alerts))


def outlier_names(store: Store, dimension: str, keys: Iterable[str]) -> dict[str, str]:
    """Display names of a dimension's networks: the country's, the AS's (country+ASN: the AS's), as the
    top lists show them."""
    if dimension == "country":
        names = store.names("country")
        return {k: key_label("locations", k, names) for k in keys}
    names = store.names("asn")
    return {k: key_label("ases", k.rpartition(":")[2], names) for k in keys}


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def ok(result: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"success": True, "errors": [], "result": result})


def error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "errors": [{"code": code, "message": message}], "result": {}},
                        status_code=status)


def csv_response(text: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8")


# ---------------------------------------------------------------- parameters (documentation only:
# values arrive as strings and query.py validates them, so every error gets the Radar error body)

_LOC_RE = r"^-?[A-Za-z]{2}(,-?[A-Za-z]{2})*$"
_CONT_RE = r"^-?(AF|AN|AS|EU|NA|OC|SA)(,-?(AF|AN|AS|EU|NA|OC|SA))*$"
_ASN_RE = r"^-?(AS)?[0-9]{1,10}(,-?(AS)?[0-9]{1,10})*$"
_RANGE_RE = r"^[0-9]{1,4}[hdw]([Cc]ontrol)?$"
_LOC_DOC = "ISO 3166 alpha-2 codes, comma separated; prefix with `-` to exclude (e.g. `DE,FR` or `-US`)"
_CONT_DOC = ("continent codes (AF, AN, AS, EU, NA, OC, SA) of the locations, comma separated; `-` excludes "
             "(e.g. `EU` or `-NA`)")
_ASN_DOC = "AS numbers, comma separated; prefix with `-` to exclude (e.g. `3320,174` or `-13335`)"
_RANGE_DOC = ("relative range ending now (floored to 15 minutes): `1d`, `7d`, `4w`, `52w`, `24h` ... (max 364 "
              "days; default 7d); append `control` for the same span just before (`7dControl`: days -14..-7). "
              "Not with dateStart/dateEnd.")
_START_DOC = "ISO 8601 start, floored to 15 minutes (naive = UTC)"
_END_DOC = "ISO 8601 end, floored to 15 minutes, inclusive: its 15-minute bucket counts (default now)"

LocationP = Annotated[str | None, Query(description=_LOC_DOC, json_schema_extra={"pattern": _LOC_RE})]
ContinentP = Annotated[str | None, Query(description=_CONT_DOC, json_schema_extra={"pattern": _CONT_RE})]
AsnP = Annotated[str | None, Query(description=_ASN_DOC, json_schema_extra={"pattern": _ASN_RE})]
DateRangeP = Annotated[str | None, Query(alias="dateRange", description=_RANGE_DOC,
                                         json_schema_extra={"pattern": _RANGE_RE})]
DateStartP = Annotated[str | None, Query(alias="dateStart", description=_START_DOC,
                                         json_schema_extra={"format": "date-time"})]
DateEndP = Annotated[str | None, Query(alias="dateEnd", description=_END_DOC,
                                       json_schema_extra={"format": "date-time"})]
FormatP = Annotated[str | None, Query(description="JSON (default) or CSV",
                                      json_schema_extra={"enum": ["JSON", "CSV"]})]
LimitP = Annotated[str | None, Query(description="entries (1..100, default 10)",
                                     json_schema_extra={"pattern": r"^[0-9]{1,3}$"})]
_TRANSPORT_DOC = ("the rows of one transport: `tcp` (default: Radar's dataset) or `quic` (the QUIC stages of "
                  "docs/quic.md)")
TransportP = Annotated[str | None, Query(description=_TRANSPORT_DOC, json_schema_extra={"enum": list(TRANSPORTS)})]
MinConnP = Annotated[str | None, Query(alias="minConnections",
                                       description="skip keys with fewer connections in the range (default 10)",
                                       json_schema_extra={"pattern": r"^[0-9]{1,9}$"})]


def _array(name: str, description: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "style": "form", "explode": True,
            "description": description + ". One value per series (repeat the parameter to ask for several).",
            "schema": {"type": "array", "maxItems": q.MAX_SERIES, "items": {"type": "string", **item}}}


def _scalar(name: str, description: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **item}}


# Radar's parameters are arrays (series by position), so they are declared here rather than from the
# function signature; values arrive as strings and query.py validates them (every error is a Radar 400).
RADAR_PARAMS = [
    _array("name", "labels of the series in the result (instead of summary_i / serie_i)",
           {"minLength": 1, "maxLength": q.MAX_NAME}),
    _array("location", _LOC_DOC, {"pattern": _LOC_RE}),
    _array("continent", _CONT_DOC, {"pattern": _CONT_RE}),
    _array("asn", _ASN_DOC, {"pattern": _ASN_RE}),
    _array("dateRange", _RANGE_DOC, {"pattern": _RANGE_RE}),
    _array("dateStart", _START_DOC, {"format": "date-time"}),
    _array("dateEnd", _END_DOC, {"format": "date-time"}),
    _scalar("format", "JSON (default) or CSV, for every series", {"enum": ["JSON", "CSV"]}),
    _array("transport", _TRANSPORT_DOC, {"enum": list(TRANSPORTS)}),
]
AGG_PARAM = _scalar("aggInterval", "15m, 1h, 1d or 1w, for every series (default: by the range's length)",
                    {"enum": list(q.AGG_INTERVALS)})

_JSON_OR_CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody, "description": "bad parameters"}}
TOP_PARAMS = ("location", "continent", "asn", "dateRange", "dateStart", "dateEnd", "format", "limit",
              "minConnections", "transport")
StageP = Annotated[str | None, Query(description="only alerts on this stage",
                                     json_schema_extra={"enum": list(q.STAGES)})]
StateP = Annotated[str | None, Query(description="open or closed (default both)",
                                     json_schema_extra={"enum": ["open", "closed"]})]
AlertLimitP = Annotated[str | None, Query(description=f"alerts (1..{q.MAX_ALERTS}, default 100), newest first",
                                          json_schema_extra={"pattern": r"^[0-9]{1,4}$"})]
OutlierDimP = Annotated[str | None, Query(description="the networks ranked: country_asn (default, peers: their "
                                                      "country), asn or country (peers: the world)",
                                          json_schema_extra={"enum": list(q.OUTLIER_DIMENSIONS)})]
OutlierLimitP = Annotated[str | None, Query(description="outliers (1..100, default 20)",
                                            json_schema_extra={"pattern": r"^[0-9]{1,3}$"})]


def create_app(store: Store, *, now: Now = utcnow, expose_connections: bool = False,
               outliers: OutlierParams | None = None) -> FastAPI:
    """The app over one store; `now` is injectable so relative ranges are testable; `outliers`: the
    topology's outliers: thresholds (default: OutlierParams())."""
    outlier_params = outliers or OutlierParams()
    app = FastAPI(title="rstscope API", version=__version__, docs_url=None, redoc_url=None,
                  description="Cloudflare Radar-compatible TCP resets and timeouts, self-hosted. See docs/api.md.")

    @app.exception_handler(q.QueryError)
    async def _query_error(_: Request, e: q.QueryError) -> JSONResponse:
        return error(400, e.code, e.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return error(400, q.E_INVALID, "; ".join(str(x.get("msg")) for x in e.errors()) or "bad request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error(e.status_code, q.E_NOT_FOUND if e.status_code == 404 else e.status_code, str(e.detail))

    def last_updated(span: Span, r: q.TimeRange) -> str:
        return q.iso_s(span[1]) if span else q.iso(r.end)

    def spans_of(qy: q.SeriesQuery) -> tuple[dict[str, Span], str]:
        """The span of every transport the series read, and lastUpdated (of the first series' transport)."""
        spans = {t: store.span(t) for t in {s.filters.transport for s in qy.series}}
        first = qy.series[0]
        return spans, last_updated(spans[first.filters.transport], first.range)

    def params(request: Request) -> list[tuple[str, str]]:
        return request.query_params.multi_items()

    def link(request: Request) -> str:
        return str(request.url_for("data_meta"))

    def fetch(qy: q.SeriesQuery) -> list[tuple[q.Series, dict[int, Cell]]]:
        return [(s, store.per_bucket(s.filters, s.range.start_s, s.range.stop_s)) for s in qy.series]

    def series_alerts(s: q.Series) -> list[Alert]:
        """The alerts that annotate a series: on exactly its network, overlapping its range."""
        return store.alerts(s.range.start_s, s.range.stop_s, s.filters, exact=True, limit=MAX_ALERT_NOTES)

    def alerts_url(request: Request) -> str:
        return str(request.url_for("alerts"))

    # ------------------------------------------------------------ Radar

    @app.get("/radar/tcp_resets_timeouts/summary", response_model=SummaryBody, tags=["radar"],
             responses={200: _JSON_OR_CSV, **_ERRORS}, openapi_extra={"parameters": RADAR_PARAMS})
    def summary(request: Request) -> Response:
        """Shares of connections per stage (percent) over a range, for the world, locations, continents or ASes;
        repeated parameters ask for several series (matched by position)."""
        qy = q.parse_series_query(params(request), now())
        parts = fetch(qy)
        spans, updated = spans_of(qy)
        res = summary_results(parts, updated, spans, link(request), named=qy.named, alerts_of=series_alerts,
                              alerts_url=alerts_url(request))
        if qy.format == "CSV":
            return csv_response(summary_csv(res, [s.key for s in qy.series], len(qy.series) > 1 or qy.named))
        return ok(res)

    @app.get("/radar/tcp_resets_timeouts/timeseries_groups", response_model=TimeseriesBody, tags=["radar"],
             responses={200: _JSON_OR_CSV, **_ERRORS}, openapi_extra={"parameters": [*RADAR_PARAMS, AGG_PARAM]})
    def timeseries_groups(request: Request) -> Response:
        """Shares per stage per aggInterval slot; every slot of the range is listed ("0" where nothing was
        counted); repeated parameters ask for several series."""
        qy = q.parse_series_query(params(request), now(), timeseries=True)
        assert qy.agg_interval is not None
        parts = fetch(qy)
        spans, updated = spans_of(qy)
        res = timeseries_results(parts, qy.agg_interval, updated, spans, link(request), named=qy.named,
                                 alerts_of=series_alerts,
                                 alerts_url=alerts_url(request))
        if qy.format == "CSV":
            return csv_response(timeseries_csv(res, [s.key for s in qy.series], len(qy.series) > 1 or qy.named))
        return ok(res)

    # ------------------------------------------------------------ rstscope extensions

    def breakdown_endpoint(request: Request, kind: str) -> Response:
        qy = q.parse_query(params(request), now())
        buckets = store.per_bucket(qy.filters, qy.range.start_s, qy.range.stop_s, breakdowns=True)
        agg = sum_aggs(buckets.values())
        total = agg.total
        known = VOCABULARY.get((qy.filters.transport, kind), ())
        if kind == "tags":
            items = breakdown(dict(agg.tags), known, total, with_stage=False)
        else:
            items = breakdown(dict(agg.signatures), known, total, with_stage=True)
        if qy.format == "CSV":
            return csv_response(to_csv(("name", "count", "share"), ([i["name"], i["count"], i["share"]]
                                                                    for i in items)))
        span = store.span(qy.filters.transport)
        meta = series_meta([(q.Series("breakdown_0", qy.filters, qy.range), buckets)], last_updated(span, qy.range),
                           {qy.filters.transport: span}, link(request))
        meta["connections"] = total
        return ok({"meta": meta, "breakdown_0": items})

    @app.get("/rstscope/tags", response_model=BreakdownBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def tags(request: Request, location: LocationP = None, continent: ContinentP = None, asn: AsnP = None,
             date_range: DateRangeP = None, date_start: DateStartP = None, date_end: DateEndP = None,
             format: FormatP = None, transport: TransportP = None) -> Response:
        """Tag counts and shares (percent of all connections; tags overlap) for the same filters as summary."""
        return breakdown_endpoint(request, "tags")

    @app.get("/rstscope/signatures", response_model=BreakdownBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def signatures(request: Request, location: LocationP = None, continent: ContinentP = None, asn: AsnP = None,
                   date_range: DateRangeP = None, date_start: DateStartP = None, date_end: DateEndP = None,
                   format: FormatP = None, transport: TransportP = None) -> Response:
        """Counts and shares of the paper's 19 tampering signatures, with the stage each belongs to."""
        return breakdown_endpoint(request, "signatures")

    def top_endpoint(request: Request, kind: str) -> Response:
        p = q.check_params(params(request), TOP_PARAMS)
        r = q.parse_range(p.get("dateRange"), p.get("dateStart"), p.get("dateEnd"), now())
        fmt = q.parse_format(p.get("format"))
        limit = q.parse_int(p.get("limit"), "limit", 10, 1, 100)
        min_conn = q.parse_int(p.get("minConnections"), "minConnections", 10, 0, 10**9)
        filters = q.parse_filters(p.get("location"), p.get("asn"), p.get("continent"), p.get("transport"))
        t = filters.transport
        restricted = filters.asn.given if kind == "locations" else filters.by_country
        if restricted:
            # Restricted by the other dimension: sum the country+ASN rows that pass both filters.
            totals: dict[str, Cell] = {}
            for key, a in store.key_totals("country_asn", r.start_s, r.stop_s, t).items():
                cc, _, asn = key.partition(":")
                if filters.accepts_country(cc) and filters.asn.accepts(asn):
                    totals.setdefault(cc if kind == "locations" else asn, Cell()).merge(a)
        elif kind == "locations":
            totals = {k: a for k, a in store.key_totals("country", r.start_s, r.stop_s, t).items()
                      if filters.accepts_country(k)}
        else:
            totals = {k: a for k, a in store.key_totals("asn", r.start_s, r.stop_s, t).items()
                      if filters.asn.accepts(k)}
        items = top_items(totals, kind, min_conn, limit, store.names(DIMENSION_OF[kind]))
        if fmt == "CSV":
            key, name = ("clientCountryAlpha2", "clientCountryName") if kind == "locations" else \
                ("clientASN", "clientASName")
            return csv_response(to_csv((key, name, "value", "connections", *q.STAGES),
                                       ([i[key], i[name], i["value"], i["connections"], *i["shares"].values()]
                                        for i in items)))
        meta = {"dateRange": [{"startTime": q.iso(r.start), "endTime": q.iso(r.end)}],
                "lastUpdated": last_updated(store.span(t), r), "normalization": "PERCENTAGE",
                "units": [dict(u) for u in UNITS], "minConnections": min_conn}
        return ok({"meta": meta, "top_0": items})

    @app.get("/rstscope/top/locations", response_model=TopBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def top_locations(request: Request, location: LocationP = None, continent: ContinentP = None, asn: AsnP = None,
                      date_range: DateRangeP = None, date_start: DateStartP = None, date_end: DateEndP = None,
                      format: FormatP = None, limit: LimitP = None, min_connections: MinConnP = None,
                      transport: TransportP = None) -> Response:
        """Locations ranked by anomaly share (100 - no_match), with at least minConnections connections."""
        return top_endpoint(request, "locations")

    @app.get("/rstscope/top/ases", response_model=TopBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def top_ases(request: Request, location: LocationP = None, continent: ContinentP = None, asn: AsnP = None,
                 date_range: DateRangeP = None, date_start: DateStartP = None, date_end: DateEndP = None,
                 format: FormatP = None, limit: LimitP = None, min_connections: MinConnP = None,
                 transport: TransportP = None) -> Response:
        """ASes ranked by anomaly share; `location=DE` ranks the ASes seen in Germany."""
        return top_endpoint(request, "ases")

    @app.get("/rstscope/alerts", response_model=AlertsBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def alerts(request: Request, location: LocationP = None, continent: ContinentP = None, asn: AsnP = None,
               date_range: DateRangeP = None, date_start: DateStartP = None, date_end: DateEndP = None,
               format: FormatP = None, stage: StageP = None, state: StateP = None,
               limit: AlertLimitP = None, transport: TransportP = None) -> Response:
        """Change alerts overlapping the range (open ones overlap everything after their start), newest first.
        `location`/`continent` select alerts on those countries and on their ASes there, `asn` on those ASes
        (and on them in any country); both: on the country+ASN networks both accept; none: every alert."""
        aq = q.parse_alert_query(params(request), now())
        found = [a.to_wire() for a in store.alerts(aq.range.start_s, aq.range.stop_s, aq.filters,
                                                   stage=aq.stage, state=aq.state, limit=aq.limit)]
        if aq.format == "CSV":
            return csv_response(alerts_csv(found))
        meta = {"dateRange": [{"startTime": q.iso(aq.range.start), "endTime": q.iso(aq.range.end)}],
                "lastUpdated": last_updated(store.span(aq.filters.transport), aq.range), "count": len(found),
                "limit": aq.limit}
        return ok({"meta": meta, "alerts": found})

    @app.get("/rstscope/outliers", response_model=OutliersBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def outlier_ranking(request: Request, location: LocationP = None, continent: ContinentP = None,
                        asn: AsnP = None, date_range: DateRangeP = None, date_start: DateStartP = None,
                        date_end: DateEndP = None, format: FormatP = None, dimension: OutlierDimP = None,
                        limit: OutlierLimitP = None, transport: TransportP = None) -> Response:
        """Networks whose stage profile departs most from their peers' over the range (a country+ASN from its
        country's other ASes, an AS or a country from the rest of the world), with a confidence from the
        counts (chi-square); `location` restricts country_asn and country to those countries."""
        oq = q.parse_outlier_query(params(request), now())
        r = oq.range
        t = oq.filters.transport  # networks and peers of one transport: QUIC never mixes into TCP's peers
        cells = {k: c for k, c in store.key_totals(oq.dimension, r.start_s, r.stop_s, t).items()
                 if oq.filters.covers(oq.dimension, k)}
        peers = store.key_totals("country" if oq.dimension == "country_asn" else "world", r.start_s, r.stop_s, t)
        ranked = [o.to_wire() for o in rank_outliers(cells, oq.dimension, peers, outlier_params,
                                                     names=outlier_names(store, oq.dimension, cells),
                                                     limit=oq.limit)]
        if oq.format == "CSV":
            return csv_response(to_csv(OUTLIER_CSV, ([o[c] for c in OUTLIER_CSV] for o in ranked)))
        meta = {"dateRange": [{"startTime": q.iso(r.start), "endTime": q.iso(r.end)}],
                "lastUpdated": last_updated(store.span(t), r), "dimension": oq.dimension,
                "minConnections": outlier_params.min_connections, "minConfidence": outlier_params.confidence}
        return ok({"meta": meta, "outliers": ranked})

    @app.get("/rstscope/meta", response_model=DataMetaBody, tags=["rstscope"], responses=_ERRORS)
    def data_meta(request: Request, transport: TransportP = None) -> Response:
        """The data's own time span and keys, of one transport (tcp by default), and the transports the store
        has: offline captures can be old, so the dashboard starts from here."""
        t = q.parse_transport(q.check_params(params(request), ("transport",)).get("transport"))
        span = store.span(t)
        start, end = span if span else (0, 0)

        def keys(kind: str) -> list[dict[str, Any]]:
            if not span:
                return []
            dim = DIMENSION_OF[kind]
            totals = store.key_totals(dim, start, end, t)
            names = store.names(dim)
            ranked = sorted(totals.items(), key=lambda kv: (-kv[1].total, kv[0]))[:MAX_META_KEYS]
            return [{"key": k, "name": key_label(kind, k, names), "connections": a.total} for k, a in ranked]

        return ok({"dataStart": q.iso_s(start) if span else None, "dataEnd": q.iso_s(end) if span else None,
                   "rows": store.row_count(t), "bucketSeconds": q.BUCKET_S, "stages": list(q.STAGES),
                   "maxRangeDays": q.MAX_RANGE.days, "maxPoints": q.MAX_POINTS,
                   "connectionsExposed": expose_connections, "locations": keys("locations"), "ases": keys("ases"),
                   "version": __version__, "transport": t, "transports": store.transports()})

    if expose_connections:
        @app.get("/rstscope/connections", tags=["rstscope"], responses=_ERRORS)
        def connections(request: Request, asn: Annotated[str, Query(description="one AS number",
                                                                    json_schema_extra={"pattern": r"^[0-9]{1,10}$"})],
                        limit: Annotated[str | None, Query(description="records (1..1000, default 100)")] = None
                        ) -> Response:
            """The most recent classified connections of one ASN (client addresses included: opt-in only)."""
            p = q.check_params(params(request), ("asn", "limit"))
            kf = q.parse_asns(p.get("asn"))
            if len(kf.include) != 1 or kf.exclude:
                raise q.QueryError("asn: exactly one AS number")
            n = q.parse_int(p.get("limit"), "limit", 100, 1, 1000)
            return ok({"asn": int(next(iter(kf.include))),
                       "connections": store.recent_connections(int(next(iter(kf.include))), n)})

    # ------------------------------------------------------------ dashboard

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
