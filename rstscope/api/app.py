"""The HTTP app: Cloudflare Radar's "TCP resets and timeouts" endpoints over the rollup store, the rstscope
extensions Radar lacks, and the dashboard. Read-only; parameters are validated in `query.py`.

Shares are always computed here from summed counts (across buckets, locations and ASes), never by
averaging the shares stored in rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rstscope import __version__
from rstscope.api import query as q
from rstscope.api.store import Agg, Store
from rstscope.core.classify import SIGNATURES, TAGS

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
    endTime: str


class ConfidenceInfo(BaseModel):
    level: int = Field(description="0 (no data) .. 5 (>= 10000 connections behind the number)")
    annotations: list[dict[str, Any]]


class Meta(BaseModel):
    dateRange: list[DateRange]
    lastUpdated: str
    normalization: str
    confidenceInfo: ConfidenceInfo


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


class SummaryResult(BaseModel):
    meta: Meta
    summary_0: StageShares


class SummaryBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: SummaryResult


class TimeseriesResult(BaseModel):
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
    clientCountryAlpha2: str | None = None
    clientASN: int | None = None
    value: str = Field(description="anomaly share: 100 - no_match share, percent")
    connections: int
    shares: StageShares


class TopMeta(BaseModel):
    dateRange: list[DateRange]
    lastUpdated: str
    normalization: str
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
    connections: int


class DataMeta(BaseModel):
    dataStart: str | None
    dataEnd: str | None
    rows: int
    bucketSeconds: int
    maxRangeDays: int
    maxPoints: int
    connectionsExposed: bool
    locations: list[MetaKey]
    ases: list[MetaKey]
    version: str


class DataMetaBody(BaseModel):
    success: bool
    errors: list[ErrorItem]
    result: DataMeta


# ---------------------------------------------------------------- pure builders

def stage_shares(agg: Agg) -> dict[str, str]:
    total = agg.total
    return {s: q.percent(agg.counts[s], total) for s in q.STAGES}


def sum_aggs(aggs: Iterable[Agg]) -> Agg:
    out = Agg()
    for a in aggs:
        out.add(a)
    return out


def base_meta(r: q.TimeRange, last_updated: str, total: int) -> dict[str, Any]:
    return {
        "dateRange": [{"startTime": q.iso(r.start), "endTime": q.iso(r.end)}],
        "lastUpdated": last_updated,
        "normalization": "PERCENTAGE",
        "confidenceInfo": {"level": q.confidence_level(total), "annotations": []},
    }


def summary_result(buckets: dict[int, Agg], r: q.TimeRange, last_updated: str) -> dict[str, Any]:
    agg = sum_aggs(buckets.values())
    return {"meta": base_meta(r, last_updated, agg.total), "summary_0": stage_shares(agg)}


def timeseries_result(buckets: dict[int, Agg], r: q.TimeRange, agg_interval: str,
                      last_updated: str) -> dict[str, Any]:
    """Buckets summed per aggInterval slot; slots without connections are left out (a gap, not a 0)."""
    slots: dict[int, Agg] = {}
    for b, a in buckets.items():
        slot = q.interval_start(b, agg_interval)
        slots.setdefault(slot, Agg()).add(a)
    serie: dict[str, list[str]] = {"timestamps": [], **{s: [] for s in q.STAGES}}
    total = 0
    for slot in sorted(slots):
        a = slots[slot]
        if a.total <= 0:
            continue
        total += a.total
        serie["timestamps"].append(q.iso_s(slot))
        for s, v in stage_shares(a).items():
            serie[s].append(v)
    meta = base_meta(r, last_updated, total)
    meta["aggInterval"] = q.AGG_INTERVALS[agg_interval][1]
    return {"meta": meta, "serie_0": serie}


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


def top_items(totals: dict[str, Agg], kind: str, min_connections: int, limit: int) -> list[dict[str, Any]]:
    """Ranked by anomaly share (100 - no_match, from counts), then by connections."""
    ranked = []
    for key, a in totals.items():
        total = a.total
        if total < max(1, min_connections):
            continue
        anomalous = total - a.counts["no_match"]
        ranked.append((-anomalous / total, -total, key, a))
    ranked.sort(key=lambda t: (t[0], t[1], t[2]))
    out = []
    for _, _, key, a in ranked[:limit]:
        item: dict[str, Any] = {"value": q.percent(a.total - a.counts["no_match"], a.total),
                                "connections": a.total, "shares": stage_shares(a)}
        if kind == "locations":
            item["clientCountryAlpha2"] = key
        else:
            item["clientASN"] = int(key)
        out.append(item)
    return out


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

LocationP = Annotated[str | None, Query(
    description="ISO 3166 alpha-2 codes, comma separated; prefix with `-` to exclude (e.g. `DE,FR` or `-US`)",
    json_schema_extra={"pattern": r"^-?[A-Za-z]{2}(,-?[A-Za-z]{2})*$"})]
AsnP = Annotated[str | None, Query(
    description="AS numbers, comma separated; prefix with `-` to exclude (e.g. `3320,174` or `-13335`)",
    json_schema_extra={"pattern": r"^-?(AS)?[0-9]{1,10}(,-?(AS)?[0-9]{1,10})*$"})]
DateRangeP = Annotated[str | None, Query(
    alias="dateRange", description="relative range ending now: `24h`, `1d`, `7d`, `4w`, `12w` ... (max 1 year; "
    "default 7d). Not with dateStart/dateEnd.", json_schema_extra={"pattern": r"^[0-9]{1,4}[hdw]$"})]
DateStartP = Annotated[str | None, Query(alias="dateStart", description="ISO 8601 start (inclusive; naive = UTC)",
                                         json_schema_extra={"format": "date-time"})]
DateEndP = Annotated[str | None, Query(alias="dateEnd", description="ISO 8601 end (exclusive; default now)",
                                       json_schema_extra={"format": "date-time"})]
FormatP = Annotated[str | None, Query(description="JSON (default) or CSV",
                                      json_schema_extra={"enum": ["JSON", "CSV"]})]
AggP = Annotated[str | None, Query(alias="aggInterval", description="15m, 1h, 1d or 1w (default: by range)",
                                   json_schema_extra={"enum": list(q.AGG_INTERVALS)})]
LimitP = Annotated[str | None, Query(description="entries (1..100, default 10)",
                                     json_schema_extra={"pattern": r"^[0-9]{1,3}$"})]
MinConnP = Annotated[str | None, Query(alias="minConnections",
                                       description="skip keys with fewer connections in the range (default 10)",
                                       json_schema_extra={"pattern": r"^[0-9]{1,9}$"})]

_JSON_OR_CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody, "description": "bad parameters"}}
TOP_PARAMS = ("location", "asn", "dateRange", "dateStart", "dateEnd", "format", "limit", "minConnections")


def create_app(store: Store, *, now: Now = utcnow, expose_connections: bool = False) -> FastAPI:
    """The app over one store; `now` is injectable so relative ranges are testable."""
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

    def last_updated(r: q.TimeRange) -> str:
        span = store.span()
        return q.iso_s(span[1]) if span else q.iso(r.end)

    def params(request: Request) -> list[tuple[str, str]]:
        return request.query_params.multi_items()

    # ------------------------------------------------------------ Radar

    @app.get("/radar/tcp_resets_timeouts/summary", response_model=SummaryBody, tags=["radar"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def summary(request: Request, location: LocationP = None, asn: AsnP = None, date_range: DateRangeP = None,
                date_start: DateStartP = None, date_end: DateEndP = None, format: FormatP = None) -> Response:
        """Shares of connections per stage (percent) over the range, for the world, locations or ASes."""
        qy = q.parse_query(params(request), now())
        res = summary_result(store.per_bucket(qy.filters, qy.range.start_s, qy.range.end_s), qy.range,
                             last_updated(qy.range))
        if qy.format == "CSV":
            return csv_response(to_csv(q.STAGES, [[res["summary_0"][s] for s in q.STAGES]]))
        return ok(res)

    @app.get("/radar/tcp_resets_timeouts/timeseries_groups", response_model=TimeseriesBody, tags=["radar"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def timeseries_groups(request: Request, location: LocationP = None, asn: AsnP = None,
                          date_range: DateRangeP = None, date_start: DateStartP = None, date_end: DateEndP = None,
                          format: FormatP = None, agg_interval: AggP = None) -> Response:
        """Shares per stage per aggInterval slot; slots without connections are omitted."""
        qy = q.parse_query(params(request), now(), timeseries=True)
        assert qy.agg_interval is not None
        res = timeseries_result(store.per_bucket(qy.filters, qy.range.start_s, qy.range.end_s), qy.range,
                                qy.agg_interval, last_updated(qy.range))
        if qy.format == "CSV":
            s = res["serie_0"]
            return csv_response(to_csv(("timestamps", *q.STAGES),
                                       zip(s["timestamps"], *(s[k] for k in q.STAGES), strict=True)))
        return ok(res)

    # ------------------------------------------------------------ rstscope extensions

    def breakdown_endpoint(request: Request, kind: str) -> Response:
        qy = q.parse_query(params(request), now())
        agg = sum_aggs(store.per_bucket(qy.filters, qy.range.start_s, qy.range.end_s, breakdowns=True).values())
        total = agg.total
        if kind == "tags":
            items = breakdown(dict(agg.tags), TAGS, total, with_stage=False)
        else:
            items = breakdown(dict(agg.signatures), SIGNATURES, total, with_stage=True)
        if qy.format == "CSV":
            return csv_response(to_csv(("name", "count", "share"), ([i["name"], i["count"], i["share"]]
                                                                    for i in items)))
        meta = base_meta(qy.range, last_updated(qy.range), total)
        meta["connections"] = total
        return ok({"meta": meta, "breakdown_0": items})

    @app.get("/rstscope/tags", response_model=BreakdownBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def tags(request: Request, location: LocationP = None, asn: AsnP = None, date_range: DateRangeP = None,
             date_start: DateStartP = None, date_end: DateEndP = None, format: FormatP = None) -> Response:
        """Tag counts and shares (percent of all connections; tags overlap) for the same filters as summary."""
        return breakdown_endpoint(request, "tags")

    @app.get("/rstscope/signatures", response_model=BreakdownBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def signatures(request: Request, location: LocationP = None, asn: AsnP = None, date_range: DateRangeP = None,
                   date_start: DateStartP = None, date_end: DateEndP = None, format: FormatP = None) -> Response:
        """Counts and shares of the paper's 19 tampering signatures, with the stage each belongs to."""
        return breakdown_endpoint(request, "signatures")

    def top_endpoint(request: Request, kind: str) -> Response:
        p = q.check_params(params(request), TOP_PARAMS)
        r = q.parse_range(p.get("dateRange"), p.get("dateStart"), p.get("dateEnd"), now())
        fmt = q.parse_format(p.get("format"))
        limit = q.parse_int(p.get("limit"), "limit", 10, 1, 100)
        min_conn = q.parse_int(p.get("minConnections"), "minConnections", 10, 0, 10**9)
        filters = q.Filters(q.parse_locations(p.get("location")), q.parse_asns(p.get("asn")))
        own, other = ("country", filters.asn) if kind == "locations" else ("asn", filters.location)
        if other.given:
            # Restricted by the other dimension: sum the country+ASN rows that pass both filters.
            totals: dict[str, Agg] = {}
            for key, a in store.key_totals("country_asn", r.start_s, r.end_s).items():
                cc, _, asn = key.partition(":")
                if filters.location.accepts(cc) and filters.asn.accepts(asn):
                    totals.setdefault(cc if kind == "locations" else asn, Agg()).add(a)
        else:
            own_filter = filters.location if kind == "locations" else filters.asn
            totals = {k: a for k, a in store.key_totals(own, r.start_s, r.end_s).items() if own_filter.accepts(k)}
        items = top_items(totals, kind, min_conn, limit)
        if fmt == "CSV":
            name = "clientCountryAlpha2" if kind == "locations" else "clientASN"
            return csv_response(to_csv((name, "value", "connections", *q.STAGES),
                                       ([i.get(name), i["value"], i["connections"], *i["shares"].values()]
                                        for i in items)))
        meta = {"dateRange": [{"startTime": q.iso(r.start), "endTime": q.iso(r.end)}],
                "lastUpdated": last_updated(r), "normalization": "PERCENTAGE", "minConnections": min_conn}
        return ok({"meta": meta, "top_0": items})

    @app.get("/rstscope/top/locations", response_model=TopBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def top_locations(request: Request, location: LocationP = None, asn: AsnP = None, date_range: DateRangeP = None,
                      date_start: DateStartP = None, date_end: DateEndP = None, format: FormatP = None,
                      limit: LimitP = None, min_connections: MinConnP = None) -> Response:
        """Locations ranked by anomaly share (100 - no_match), with at least minConnections connections."""
        return top_endpoint(request, "locations")

    @app.get("/rstscope/top/ases", response_model=TopBody, tags=["rstscope"],
             responses={200: _JSON_OR_CSV, **_ERRORS})
    def top_ases(request: Request, location: LocationP = None, asn: AsnP = None, date_range: DateRangeP = None,
                 date_start: DateStartP = None, date_end: DateEndP = None, format: FormatP = None,
                 limit: LimitP = None, min_connections: MinConnP = None) -> Response:
        """ASes ranked by anomaly share; `location=DE` ranks the ASes seen in Germany."""
        return top_endpoint(request, "ases")

    @app.get("/rstscope/meta", response_model=DataMetaBody, tags=["rstscope"], responses=_ERRORS)
    def data_meta(request: Request) -> Response:
        """The data's own time span and keys: offline captures can be old, so the dashboard starts from here."""
        q.check_params(params(request), ())
        span = store.span()
        start, end = span if span else (0, 0)

        def keys(dim: str) -> list[dict[str, Any]]:
            if not span:
                return []
            totals = store.key_totals(dim, start, end)
            ranked = sorted(totals.items(), key=lambda kv: (-kv[1].total, kv[0]))[:500]
            return [{"key": k, "connections": a.total} for k, a in ranked]

        return ok({"dataStart": q.iso_s(start) if span else None, "dataEnd": q.iso_s(end) if span else None,
                   "rows": store.row_count(), "bucketSeconds": q.BUCKET_S, "maxRangeDays": q.MAX_RANGE.days,
                   "maxPoints": q.MAX_POINTS, "connectionsExposed": expose_connections,
                   "locations": keys("country"), "ases": keys("asn"), "version": __version__})

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
