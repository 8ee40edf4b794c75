"""Radar's API as its real clients call it: the official Cloudflare Python library (`cloudflare` on PyPI),
sync and async, with strict response validation, against `rstscope serve`'s app on a real uvicorn server
(127.0.0.1), over the parameters the library offers for the two endpoints. Every number is checked
against the offline rollups of the repo's fixture captures.

The data: each fixture capture (tests/fixtures/*.pcap, real traffic) is replayed at several times (its
timestamps shifted by whole hours, which keeps every 15-minute bucket boundary) and from several places
(a GeoLite2-style country and ASN database per site), classified by `rstscope.offline.Analyzer` and
rolled up by the core's `Rollup`: the same rows `rstscope analyze --rollups` writes, with several
locations and ASes in the same buckets. The expected numbers are summed from those rows here, with this
file's own reading of the rules in docs/api.md (ranges, flooring, continents, exclusions).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dpkt
import httpx
import netaddr
import orjson
import pytest
import uvicorn
from cloudflare import APIResponseValidationError, AsyncCloudflare, BadRequestError, Cloudflare
from cloudflare.types.radar.tcp_resets_timeout_summary_response import Summary0
from cloudflare.types.radar.tcp_resets_timeout_timeseries_groups_response import Serie0
from mmdb_writer import MMDBWriter

from api.conftest import FIXTURES, REPO, serving
from rstscope import config
from rstscope.api.app import create_app
from rstscope.api.store import Store
from rstscope.core.rollup import Rollup
from rstscope.geo import GeoDB
from rstscope.offline import Analyzer, Options

STAGES = ("post_syn", "post_ack", "post_psh", "later_in_flow", "no_match")
# Sites the captures are replayed from: (country, ASN). AS13335 is in two countries; XX/0 is "unknown"
# (no geo data). The continents are this test's own table (GeoNames' choice, see docs/api.md).
SITES = [("DE", 3320), ("FR", 3215), ("US", 7922), ("US", 13335), ("DE", 13335), ("BR", 28573), ("CN", 4134),
         ("IR", 58224), ("AU", 1221), ("ZA", 37457), ("XX", 0)]
CONTINENT = {"DE": "EU", "FR": "EU", "US": "NA", "BR": "SA", "CN": "AS", "IR": "AS", "AU": "OC", "ZA": "AF"}
CAPTURES = sorted(p.name for p in FIXTURES.glob("*.pcap"))
GROUPS = 24  # replay times; each holds PER_GROUP captures from as many sites (several locations per bucket)
PER_GROUP = 5
GROUP_STEP_H = 35  # hours between replay times: about five weeks of data, some days without any
FIRST_BUCKET = 1795977000  # 2026-11-29T18:30:00Z, the 15-minute bucket of the fixture captures
NOW = datetime.fromtimestamp(FIRST_BUCKET + 7 * 60, UTC)  # the server's clock: 7 minutes into a bucket
AGG_S = {"15m": 900, "1h": 3600, "1d": 86400, "1w": 7 * 86400}
AGG_NAMES = {"15m": "FIFTEEN_MINUTES", "1h": "ONE_HOUR", "1d": "ONE_DAY", "1w": "ONE_WEEK"}
MONDAY = 4 * 86400  # 1970-01-05, a Monday: weeks start there
SUMMARY = "/radar/tcp_resets_timeouts/summary"


# ---------------------------------------------------------------- the data: real captures, replayed


def shifted_copy(src: Path, dst: Path, offset_s: int) -> Path:
    """The capture with every timestamp moved by offset_s (a multiple of 900: buckets stay aligned)."""
    with src.open("rb") as fi, dst.open("wb") as fo:
        reader = dpkt.pcap.Reader(fi)
        writer = dpkt.pcap.Writer(fo, snaplen=65535, linktype=reader.datalink())
        for ts, buf in reader:
            writer.writepkt(buf, ts=float(ts) + offset_s)
    return dst


def site_geo(d: Path, cc: str, asn: int) -> GeoDB:
    """A country and an ASN database (MaxMind layout) that put every fixture client (10/8, fd00::/8) at a site."""
    if cc == "XX":
        return GeoDB.empty()
    d.mkdir(parents=True, exist_ok=True)
    nets = netaddr.IPSet(["10.0.0.0/8", "fd00::/8"])
    for name, kind, rec in (("country.mmdb", "GeoLite2-Country", {"country": {"iso_code": cc}}),
                            ("asn.mmdb", "GeoLite2-ASN", {"autonomous_system_number": asn,
                                                          "autonomous_system_organization": f"Net {asn}"})):
        w = MMDBWriter(ip_version=6, database_type=kind, ipv4_compatible=True)
        w.insert_network(nets, rec)
        w.to_db_file(str(d / name))
    return GeoDB.open(d)


@dataclass
class Data:
    rows: list[dict[str, Any]]  # the rollup rows (what `rstscope analyze --rollups` writes)
    rollups: Path  # the same, as a JSON lines file
    records: int
    span: tuple[int, int]  # first bucket start, last bucket end


def replay_plan() -> list[tuple[int, str, int]]:
    """(offset in seconds, capture, site index) of every replay."""
    plan = []
    for g in range(GROUPS):
        offset = -(g * GROUP_STEP_H + 1) * 3600
        for k in range(PER_GROUP):
            plan.append((offset, CAPTURES[(PER_GROUP * g + k) % len(CAPTURES)], (g + 2 * k) % len(SITES)))
    return plan


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    d = tmp_path_factory.mktemp("radar-client")
    topo = config.load(None)
    geos = {i: site_geo(d / f"geo{i}", cc, asn) for i, (cc, asn) in enumerate(SITES)}
    roll = Rollup()
    records = 0
    for n, (offset, capture, site) in enumerate(replay_plan()):
        pcap = shifted_copy(FIXTURES / capture, d / f"replay{n}.pcap", offset)
        recs: list[Any] = []
        analyzer = Analyzer(topo, Options(), geos[site], recs.append)
        analyzer.run([pcap])
        cc, asn = SITES[site]
        assert all(r["country"] == cc and r["asn"] == asn for r in recs)
        # The analyzer's own rollup of this replay is what `analyze --rollups` writes for it.
        assert sum(r["total"] for r in analyzer.rollup.rows() if r["dimension"] == "world") == len(recs)
        roll.extend(recs)
        records += len(recs)
    rows = list(roll.rows())
    path = d / "rollups.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    world = [r for r in rows if r["dimension"] == "world"]
    assert sum(r["total"] for r in world) == records > 1000  # enough for confidence levels 0 to 4
    per_bucket = Counter(r["bucket_start"] for r in rows if r["dimension"] == "country")
    assert max(per_bucket.values()) >= 3  # several locations share buckets
    # The rows add up: world = the sum of the country+ASN rows, bucket by bucket.
    by_bucket: dict[int, Counter[str]] = {}
    for r in rows:
        if r["dimension"] == "country_asn":
            by_bucket.setdefault(r["bucket_start"], Counter()).update(r["counts"])
    assert all(Counter(r["counts"]) == by_bucket[r["bucket_start"]] for r in world)
    return Data(rows, path, records, (min(r["bucket_start"] for r in world),
                                     max(r["bucket_start"] for r in world) + 900))


# ---------------------------------------------------------------- servers and clients


def free_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.fixture(scope="module")
def store(data: Data) -> Store:
    s = Store()
    assert s.load_rollups(data.rollups) == len(data.rows)  # as `rstscope serve --rollups FILE` does
    return s


@pytest.fixture(scope="module")
def base_url(store: Store) -> Iterator[str]:
    """`rstscope serve`'s app (clock fixed at NOW) on a real uvicorn server on 127.0.0.1."""
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(create_app(store, now=lambda: NOW), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def cf(base_url: str) -> Iterator[Cloudflare]:
    with Cloudflare(api_token="rstscope-test", base_url=base_url, max_retries=0,
                    _strict_response_validation=True) as client:
        yield client


@pytest.fixture
async def acf(base_url: str) -> AsyncIterator[AsyncCloudflare]:
    async with AsyncCloudflare(api_token="rstscope-test", base_url=base_url, max_retries=0,
                               _strict_response_validation=True) as client:
        yield client


# ---------------------------------------------------------------- the oracle (from the rollup rows)


def _codes(values: Sequence[str] | None, i: int, n: int, norm: Callable[[str], str]) -> tuple[set[str], set[str]]:
    """(included, excluded) of the i-th value of a list parameter (a single value applies to all)."""
    if not values:
        return set(), set()
    raw = values[i] if len(values) == n else values[0]
    inc: set[str] = set()
    exc: set[str] = set()
    for item in (x.strip() for x in raw.split(",") if x.strip()):
        (exc if item.startswith("-") else inc).add(norm(item.lstrip("-")))
    return inc, exc


def _accept(inc: set[str], exc: set[str], key: str) -> bool:
    return (not inc or key in inc) and key not in exc


def _ts(v: str | datetime) -> int:
    dt = v if isinstance(v, datetime) else datetime.fromisoformat(v)
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())


def _floor(ts: int) -> int:
    return ts - ts % 900


@dataclass
class Want:
    """One series as the rules say it should come out."""

    start: int
    end: int  # reported endTime
    stop: int  # exclusive end of the data summed
    accept: Callable[[str, str], bool]  # (country, asn) -> selected
    filtered: bool


def want_series(kw: Mapping[str, Any], n: int) -> list[Want]:
    now15 = _floor(int(NOW.timestamp()))
    out = []
    for i in range(n):
        loc = _codes(kw.get("location"), i, n, str.upper)
        cont = _codes(kw.get("continent"), i, n, str.upper)
        asn = _codes(kw.get("asn"), i, n, lambda a: str(int(a.upper().removeprefix("AS"))))

        def pick(name: str, i: int = i) -> Any:
            v = kw.get(name)
            if not v:
                return None
            item = v[i] if len(v) == n else v[0]
            return item if not isinstance(item, str) or item.strip() else None

        dr, ds, de = pick("date_range"), pick("date_start"), pick("date_end")
        if ds is None and de is None:
            text = (dr or "7d").lower()
            control = text.endswith("control")
            num, unit = int(text.removesuffix("control")[:-1]), text.removesuffix("control")[-1]
            span = num * {"h": 3600, "d": 86400, "w": 7 * 86400}[unit]
            shift = -(-span // (7 * 86400)) * 7 * 86400 if control else 0
            start, end, stop = now15 - shift - span, now15 - shift, now15 - shift
        else:
            end = _floor(_ts(de)) if de is not None else now15
            start = _floor(_ts(ds)) if ds is not None else end - 7 * 86400
            stop = end + 900

        def accept(cc: str, a: str, loc: Any = loc, cont: Any = cont, asn: Any = asn) -> bool:
            return (_accept(*loc, cc) and _accept(*cont, CONTINENT.get(cc, "")) and _accept(*asn, a))

        out.append(Want(start, end, stop, accept, any(x[0] or x[1] for x in (loc, cont, asn))))
    return out


def counts_per_bucket(data: Data, w: Want) -> dict[int, Counter[str]]:
    out: dict[int, Counter[str]] = {}
    for r in data.rows:
        if r["dimension"] != "country_asn" or not w.start <= r["bucket_start"] < w.stop:
            continue
        cc, _, a = r["key"].partition(":")
        if w.accept(cc, a):
            c = out.setdefault(r["bucket_start"], Counter())
            c.update(r["counts"])
            c["_unreliable"] += r["post_syn_geo_unreliable"]
    return out


def check_shares(got: Mapping[str, str], counts: Counter[str]) -> None:
    total = sum(counts[s] for s in STAGES)
    assert set(got) >= set(STAGES)
    for s in STAGES:
        assert isinstance(got[s], str)
        want = 100.0 * counts[s] / total if total else 0.0
        assert float(got[s]) == pytest.approx(want, abs=1e-6), (s, got, counts)
    if total == 0:
        assert all(got[s] == "0" for s in STAGES)


def level(total: int) -> int:
    return next((lv for lv, need in ((5, 10000), (4, 1000), (3, 100), (2, 10), (1, 1)) if total >= need), 0)


def iso(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def check_meta(meta: Any, wants: list[Want], per: list[dict[int, Counter[str]]], data: Data,
               keys: list[str]) -> None:
    """Fields the strict client already typed; here their values."""
    assert [(d.start_time, d.end_time) for d in meta.date_range] == [(iso(w.start), iso(w.end)) for w in wants]
    assert meta.normalization == "PERCENTAGE"
    assert [(u.name, u.value) for u in meta.units] == [("*", "connections")]
    assert meta.last_updated == iso(data.span[1])
    totals = [sum(sum(c[s] for s in STAGES) for c in p.values()) for p in per]
    assert meta.confidence_info.level == min(level(t) for t in totals)
    notes = meta.confidence_info.annotations
    gaps, caveats = set(), set()
    for key, w, p in zip(keys, wants, per, strict=True):
        if w.start < data.span[0]:
            gaps.add((iso(w.start), iso(min(w.stop, data.span[0]))))
        if w.stop > data.span[1]:
            gaps.add((iso(max(w.start, data.span[1])), iso(w.stop)))
        unreliable = sum(c["_unreliable"] for c in p.values())
        if w.filtered and unreliable:
            caveats.add((iso(w.start), iso(w.stop), key, unreliable))
    assert {(a.start_date, a.end_date) for a in notes if a.event_type == "PIPELINE"} == gaps
    got = set()
    for a in notes:
        if a.event_type == "GENERAL":
            m = re.match(r"Post-SYN \((.+)\): (\d+) ", a.description)
            assert m and a.tags == ["post_syn", "geolocation"], a
            got.add((a.start_date, a.end_date, m.group(1), int(m.group(2))))
    assert got == caveats
    assert all(a.data_source == "CONNECTION_ANOMALY" and a.linked_url.endswith("/rstscope/meta") for a in notes)
    assert len(notes) == len(gaps) + len(caveats)


def auto_agg(w: Want) -> str:
    span = w.stop - w.start
    return "15m" if span <= 3 * 86400 else "1h" if span <= 31 * 86400 else "1d"


def slot_of(ts: int, size: int) -> int:
    base = MONDAY if size == 7 * 86400 else 0
    return (ts - base) // size * size + base


def check_serie(serie: Any, w: Want, buckets: dict[int, Counter[str]], agg: str) -> None:
    size = AGG_S[agg]
    grid = list(range(slot_of(w.start, size), slot_of(w.stop - 1, size) + 1, size))
    assert serie.timestamps == [iso(t) for t in grid]
    slots: dict[int, Counter[str]] = {}
    for b, c in buckets.items():
        slots.setdefault(slot_of(b, size), Counter()).update(c)
    for i, t in enumerate(grid):
        check_shares({s: getattr(serie, s)[i] for s in STAGES}, slots.get(t, Counter()))


def series_keys(kw: Mapping[str, Any], n: int, prefix: str) -> list[str]:
    return list(kw["name"]) if kw.get("name") else [f"{prefix}{i}" for i in range(n)]


def n_series(kw: Mapping[str, Any]) -> int:
    return max([len(v) for k, v in kw.items() if isinstance(v, list)] or [1])


def check_summary(resp: Any, kw: Mapping[str, Any], data: Data) -> None:
    n = n_series(kw)
    wants = want_series(kw, n)
    per = [counts_per_bucket(data, w) for w in wants]
    keys = series_keys(kw, n, "summary_")
    check_meta(resp.meta, wants, per, data, keys)
    extra = dict(resp.model_extra or {})
    for key, p in zip(keys, per, strict=True):
        got = resp.summary_0 if key == "summary_0" else Summary0.model_validate(extra.pop(key))
        check_shares(got.model_dump(), sum(p.values(), Counter()))
    assert extra == {}, f"unexpected keys {sorted(extra)}"
    if keys[0] != "summary_0":
        check_shares(resp.summary_0.model_dump(), sum(per[0].values(), Counter()))


def check_timeseries(resp: Any, kw: Mapping[str, Any], data: Data) -> None:
    n = n_series(kw)
    wants = want_series(kw, n)
    per = [counts_per_bucket(data, w) for w in wants]
    keys = series_keys(kw, n, "serie_")
    agg = kw.get("agg_interval") or auto_agg(wants[0])
    assert resp.meta.agg_interval == AGG_NAMES[agg]
    check_meta(resp.meta, wants, per, data, keys)
    extra = dict(resp.model_extra or {})
    for key, w, p in zip(keys, wants, per, strict=True):
        got = resp.serie_0 if key == "serie_0" else Serie0.model_validate(extra.pop(key))
        check_serie(got, w, p, agg)
    assert extra == {}, f"unexpected keys {sorted(extra)}"
    if keys[0] != "serie_0":
        check_serie(resp.serie_0, wants[0], per[0], agg)


# ---------------------------------------------------------------- the parameter grid

D0 = datetime.fromtimestamp(FIRST_BUCKET, UTC)
FILTERS: list[dict[str, list[str]]] = [
    {},
    {"location": ["DE"]},
    {"location": ["de,US"]},
    {"location": ["-US"]},
    {"location": ["-US,-XX"]},
    {"location": ["XX"]},
    {"continent": ["EU"]},
    {"continent": ["-EU"]},
    {"continent": ["eu,AS"]},
    {"continent": ["-EU,-NA"]},
    {"asn": ["13335"]},
    {"asn": ["AS3320,13335"]},
    {"asn": ["-13335"]},
    {"asn": ["-13335,-0"]},
    {"location": ["US"], "asn": ["13335"]},
    {"location": ["-US"], "asn": ["13335"]},
    {"continent": ["EU"], "asn": ["-13335"]},
    {"continent": ["NA,EU"], "location": ["-FR"]},
    {"location": ["DE,CN"], "continent": ["AS"]},
    {"continent": ["OC"], "location": ["-AU"]},  # nothing left: zeros
    {"continent": ["AF"], "asn": ["-37457"]},
]
DATES: list[dict[str, list[Any]]] = [
    {},  # Radar's default, 7d
    {"date_range": ["1d"]},
    {"date_range": ["7d"]},
    {"date_range": ["2w"]},
    {"date_range": ["4w"]},
    {"date_range": ["7dControl"]},
    {"date_range": ["10dcontrol"]},
    {"date_range": ["24h"]},
    {"date_start": [D0 - timedelta(days=20)], "date_end": [D0 - timedelta(days=13)]},  # aware datetimes
    {"date_start": [(D0 - timedelta(days=9, minutes=-7)).replace(tzinfo=None)],  # naive = UTC, floored
     "date_end": [(D0 - timedelta(days=2, minutes=-14)).replace(tzinfo=None)]},
    {"date_start": ["2026-11-02T06:29:59Z"], "date_end": ["2026-11-28T23:59:59+00:00"]},
    {"date_start": ["2026-11-20T00:00:00+02:00"]},  # dateEnd: now
    {"date_end": ["2026-11-25T12:00:00Z"]},  # dateStart: 7 days before
    {"date_start": ["2026-11-25T12:00:00Z"], "date_end": ["2026-11-25T12:00:00Z"]},  # one bucket
]


def ids(cases: Sequence[Mapping[str, Any]]) -> list[str]:
    return [",".join(f"{k}={'|'.join(map(str, v))}" for k, v in c.items()) or "default" for c in cases]


GRID = [{**f, **d} for f in FILTERS for d in DATES]
GRID_IDS = [f"{a}/{b}" for a in ids(FILTERS) for b in ids(DATES)]
AGGS = ["15m", "1h", "1d", "1w"]
AGG_DATES = [DATES[1], DATES[2], DATES[5], DATES[8], DATES[10]]
AGG_GRID = [{**f, **d, "agg_interval": a} for a in AGGS for f in (FILTERS[0], FILTERS[7], FILTERS[15])
            for d in AGG_DATES]
MULTI: list[dict[str, list[Any]]] = [
    {"location": ["DE", "US"], "date_range": ["7d"]},  # one dateRange for both
    {"name": ["germany", "united states"], "location": ["DE", "US"]},
    {"name": ["this_week", "previous_week"], "date_range": ["7d", "7dControl"], "continent": ["EU"]},
    {"date_range": ["2w", "2wcontrol"], "asn": ["13335", "-13335"]},
    {"date_start": [D0 - timedelta(days=30), D0 - timedelta(days=10)],
     "date_end": [D0 - timedelta(days=27), D0 - timedelta(days=7)], "asn": ["13335"]},
    {"location": ["DE", "-DE"], "date_range": ["4w"]},
    {"name": ["de", "not_de", "us_fr"], "location": ["DE", "-DE", "US,FR"], "date_range": ["4w"]},
    {"name": ["eu", "as", "na", "sa", "oc", "af"], "continent": ["EU", "AS", "NA", "SA", "OC", "AF"]},
    {"name": ["summary_0", "x"], "location": ["CN", "IR"]},
    {"location": [cc for cc, _ in SITES[:10]], "date_range": ["4w"]},  # ten series, the most allowed
]
MULTI_TS = [{**m, "agg_interval": a} for m, a in zip(MULTI, ["1h", "1d", "1h", "1d", "1h", "1d", "1w", "1d", "1d",
                                                              "1w"], strict=True)]
for m in MULTI_TS:
    if m.get("name") == ["summary_0", "x"]:
        m["name"] = ["serie_0", "x"]


# ---------------------------------------------------------------- sync client


@pytest.mark.parametrize("kw", GRID, ids=GRID_IDS)
def test_summary(cf: Cloudflare, data: Data, kw: dict[str, Any]) -> None:
    check_summary(cf.radar.tcp_resets_timeouts.summary(**kw), kw, data)


@pytest.mark.parametrize("kw", GRID, ids=GRID_IDS)
def test_timeseries_groups(cf: Cloudflare, data: Data, kw: dict[str, Any]) -> None:
    check_timeseries(cf.radar.tcp_resets_timeouts.timeseries_groups(**kw), kw, data)


@pytest.mark.parametrize("kw", AGG_GRID, ids=ids(AGG_GRID))
def test_timeseries_agg_intervals(cf: Cloudflare, data: Data, kw: dict[str, Any]) -> None:
    check_timeseries(cf.radar.tcp_resets_timeouts.timeseries_groups(**kw), kw, data)


@pytest.mark.parametrize("kw", MULTI, ids=ids(MULTI))
def test_summary_several_series(cf: Cloudflare, data: Data, kw: dict[str, Any]) -> None:
    check_summary(cf.radar.tcp_resets_timeouts.summary(**kw, format="JSON"), kw, data)


@pytest.mark.parametrize("kw", MULTI_TS, ids=ids(MULTI_TS))
def test_timeseries_several_series(cf: Cloudflare, data: Data, kw: dict[str, Any]) -> None:
    check_timeseries(cf.radar.tcp_resets_timeouts.timeseries_groups(**kw), kw, data)


def test_control_range_is_the_span_just_before(cf: Cloudflare) -> None:
    """Radar's examples: 7dControl covers days -14..-7, 10dControl days -24..-14 (weeks kept aligned)."""
    now15 = datetime.fromtimestamp(_floor(int(NOW.timestamp())), UTC)
    r = cf.radar.tcp_resets_timeouts.summary(date_range=["7d", "7dControl"])
    assert [(d.start_time, d.end_time) for d in r.meta.date_range] == [
        (now15 - timedelta(days=7), now15), (now15 - timedelta(days=14), now15 - timedelta(days=7))]
    r = cf.radar.tcp_resets_timeouts.summary(date_range=["10d", "10dControl"])
    assert r.meta.date_range[1].start_time == now15 - timedelta(days=24)
    assert r.meta.date_range[1].end_time == now15 - timedelta(days=14)


def test_dates_are_floored_and_date_end_is_inclusive(cf: Cloudflare, data: Data) -> None:
    """dateStart 06:29:59 -> 06:15; dateEnd 07:14 -> 07:00, and the 07:00 bucket counts (15m slots: 4)."""
    day = (D0 - timedelta(days=3)).replace(minute=0)
    kw: dict[str, Any] = {"date_start": [day.replace(hour=6, minute=29, second=59)],
                          "date_end": [day.replace(hour=7, minute=14)], "agg_interval": "15m"}
    r = cf.radar.tcp_resets_timeouts.timeseries_groups(**kw)
    assert r.meta.date_range[0].start_time == day.replace(hour=6, minute=15)
    assert r.meta.date_range[0].end_time == day.replace(hour=7)
    assert r.serie_0.timestamps == [day.replace(hour=6, minute=15) + timedelta(minutes=15 * k) for k in range(4)]
    check_timeseries(r, kw, data)


def test_empty_slots_are_zero_filled(cf: Cloudflare, data: Data) -> None:
    """Days without data are listed with "0" for every stage (Radar lists every slot)."""
    r = cf.radar.tcp_resets_timeouts.timeseries_groups(date_range=["4w"], agg_interval="15m", location=["ZA"])
    zero = [i for i in range(len(r.serie_0.timestamps)) if all(getattr(r.serie_0, s)[i] == "0" for s in STAGES)]
    assert len(r.serie_0.timestamps) == 4 * 7 * 96 and 0 < len(zero) < len(r.serie_0.timestamps)


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("kw", [{}, {"location": ["DE"], "date_range": ["2w"]}, MULTI[1], MULTI[3]],
                         ids=["default", "one", "named", "two"])
def test_csv(cf: Cloudflare, kw: dict[str, Any]) -> None:
    """format=CSV: text/csv, the same numbers as JSON; with several (or named) series a `series` column.
    The library's typed methods cannot parse CSV (strict mode expects JSON): read it raw."""
    raw = cf.radar.tcp_resets_timeouts.with_raw_response.summary(**kw, format="CSV")
    assert raw.headers["content-type"].startswith("text/csv")
    rows = csv_rows(raw.text())
    res = cf.radar.tcp_resets_timeouts.summary(**kw)
    keys = series_keys(kw, n_series(kw), "summary_")
    extra = res.model_extra or {}
    want = [res.summary_0.model_dump() if k == "summary_0" else extra[k] for k in keys]
    if len(keys) > 1 or kw.get("name"):
        assert [r.pop("series") for r in rows] == keys
    assert rows == [{s: w[s] for s in STAGES} for w in want]

    raw_ts = cf.radar.tcp_resets_timeouts.with_raw_response.timeseries_groups(**kw, format="CSV", agg_interval="1d")
    rows = csv_rows(raw_ts.text())
    res_ts = cf.radar.tcp_resets_timeouts.with_raw_response.timeseries_groups(**kw, agg_interval="1d").json()
    flat = [{**({"series": k} if len(keys) > 1 or kw.get("name") else {}), "timestamps": t,
             **{s: v[s][i] for s in STAGES}}
            for k in [k.replace("summary_", "serie_") for k in keys]
            for v in [res_ts["result"][k]] for i, t in enumerate(v["timestamps"])]
    assert rows == flat and len(rows) >= 8

    with pytest.raises(APIResponseValidationError, match="application/json"):
        cf.radar.tcp_resets_timeouts.summary(**kw, format="CSV")


@pytest.mark.parametrize(("kw", "message"), [
    ({"date_range": ["7d", "14d"]}, "same duration"),
    ({"date_start": ["2026-11-01T00:00:00Z", "2026-11-01T12:00:00Z"], "date_end": ["2026-11-02T00:00:00Z"]},
     "same duration"),
    ({"location": ["DE", "FR", "US"], "asn": ["1", "2"]}, "2 values for 3 series"),
    ({"name": ["a"], "location": ["DE", "FR"]}, "1 names for 2 series"),
    ({"name": ["a", "a"], "location": ["DE", "FR"]}, "must differ"),
    ({"name": ["meta"]}, "meta"),
    ({"name": ["serie_1", "x"], "location": ["DE", "FR"]}, "another series"),
    ({"name": ["x" * 101]}, "series name"),
    ({"continent": ["XY"]}, "continent"),
    ({"continent": ["EU,-EU"]}, "both included and excluded"),
    ({"location": ["Germany"]}, "location"),
    ({"asn": ["AS-1"]}, "asn"),
    ({"date_range": ["365d"]}, "longer than 364d"),
    ({"date_range": ["53w"]}, "longer than 52w"),
    ({"date_range": ["7x"]}, "dateRange"),
    ({"date_range": ["7d"], "date_start": ["2026-11-01T00:00:00Z"]}, "cannot be combined"),
    ({"date_start": ["2026-11-03T00:00:00Z"], "date_end": ["2026-11-02T00:00:00Z"]}, "not be after"),
    ({"date_start": ["2024-01-01T00:00:00Z"], "date_end": ["2026-01-01T00:00:00Z"]}, "longer than 366"),
    ({"date_start": ["yesterday"]}, "ISO 8601"),
    ({"location": [cc for cc, _ in SITES]}, "max 10"),
    ({"format": "XML"}, "format"),
])
def test_errors_are_radar_400s(cf: Cloudflare, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequestError) as e:
        cf.radar.tcp_resets_timeouts.summary(**kw)
    body = e.value.body
    assert e.value.status_code == 400 and isinstance(body, dict)
    assert body["success"] is False and body["result"] == {}
    [err] = body["errors"]
    assert err["code"] == 2001 and message in err["message"]


def test_timeseries_errors(cf: Cloudflare) -> None:
    with pytest.raises(BadRequestError, match="points"):
        cf.radar.tcp_resets_timeouts.timeseries_groups(date_range=["52w"], agg_interval="15m")
    with pytest.raises(BadRequestError, match="unknown parameter"):
        cf.radar.tcp_resets_timeouts.timeseries_groups(extra_query={"locations": "DE"})
    with pytest.raises(BadRequestError, match="give it once"):
        cf.radar.tcp_resets_timeouts.timeseries_groups(extra_query={"aggInterval": ["1h", "1d"]})


# ---------------------------------------------------------------- async client


async def test_async_client_over_the_grid(acf: AsyncCloudflare, data: Data) -> None:
    """The whole grid again with the async client, many requests in flight at once."""
    sem = asyncio.Semaphore(8)

    async def one(kind: str, kw: dict[str, Any]) -> None:
        async with sem:
            if kind == "summary":
                check_summary(await acf.radar.tcp_resets_timeouts.summary(**kw), kw, data)
            else:
                check_timeseries(await acf.radar.tcp_resets_timeouts.timeseries_groups(**kw), kw, data)

    jobs = [one("summary", kw) for kw in GRID + MULTI] + [one("timeseries", kw) for kw in GRID + AGG_GRID + MULTI_TS]
    await asyncio.gather(*jobs)


async def test_async_raw_csv_and_errors(acf: AsyncCloudflare) -> None:
    raw = await acf.radar.tcp_resets_timeouts.with_raw_response.timeseries_groups(
        name=["a", "b"], location=["DE", "US"], agg_interval="1w", format="CSV")
    rows = csv_rows(await raw.text())
    assert {r["series"] for r in rows} == {"a", "b"} and list(rows[0]) == ["series", "timestamps", *STAGES]
    with pytest.raises(BadRequestError, match="same duration"):
        await acf.radar.tcp_resets_timeouts.summary(date_range=["1d", "2d"])


async def test_async_client_on_an_asgi_transport(store: Store, data: Data) -> None:
    """The library also runs over an httpx transport bound to the ASGI app (no socket)."""
    app = create_app(store, now=lambda: NOW)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://rstscope.test")
    async with AsyncCloudflare(api_token="t", base_url="http://rstscope.test", http_client=http, max_retries=0,
                               _strict_response_validation=True) as client:
        for kw in MULTI[:4]:
            check_summary(await client.radar.tcp_resets_timeouts.summary(**kw), kw, data)


# ---------------------------------------------------------------- `rstscope serve` itself


def test_rstscope_serve_command(data: Data) -> None:
    """The CLI server (real clock, so absolute dates) answers the strict library with the same numbers."""
    with serving(data.rollups) as base, Cloudflare(api_token="t", base_url=base, max_retries=0,
                                                      _strict_response_validation=True) as client:
        for kw in (DATES[8], DATES[9], DATES[10]):
            for f in (FILTERS[0], FILTERS[8], FILTERS[15]):
                check_summary(client.radar.tcp_resets_timeouts.summary(**f, **kw), {**f, **kw}, data)
                check_timeseries(client.radar.tcp_resets_timeouts.timeseries_groups(**f, **kw, agg_interval="1h"),
                                 {**f, **kw, "agg_interval": "1h"}, data)
        kw = MULTI[4]
        check_summary(client.radar.tcp_resets_timeouts.summary(**kw), kw, data)

def test_empty_values_over_plain_http(base_url: str, data: Data) -> None:
    """An empty value means "not set" for its series, so series can mix filters and date forms. (The official
    library drops empty strings from its lists: from it, give every list in full, or once for all series.)"""
    params = [("dateRange", "7d"), ("dateRange", ""), ("dateStart", ""), ("dateStart", "2026-11-10T00:07:00Z"),
              ("dateEnd", ""), ("dateEnd", "2026-11-17T00:00:00Z"), ("location", "DE"), ("location", "")]
    body = httpx.get(base_url + SUMMARY, params=params).json()
    assert body["success"] is True, body
    res = body["result"]
    kw = {"date_range": ["7d", None], "date_start": [None, "2026-11-10T00:07:00Z"],
          "date_end": [None, "2026-11-17T00:00:00Z"], "location": ["DE", ""]}
    wants = want_series(kw, 2)
    assert [(d["startTime"], d["endTime"]) for d in res["meta"]["dateRange"]] == [
        (iso(w.start).strftime("%Y-%m-%dT%H:%M:%SZ"), iso(w.end).strftime("%Y-%m-%dT%H:%M:%SZ")) for w in wants]
    for key, w in zip(("summary_0", "summary_1"), wants, strict=True):
        check_shares(res[key], sum(counts_per_bucket(data, w).values(), Counter()))
    assert not wants[1].filtered
    bad = httpx.get(base_url + SUMMARY, params=[("name", "a"), ("name", ""), ("location", "DE"), ("location", "FR")])
    assert bad.status_code == 400 and "series name" in bad.json()["errors"][0]["message"]


def test_summary_via_plain_http_matches(base_url: str, cf: Cloudflare) -> None:
    """What the library sends is plain repeated parameters: the same request by hand gives the same body."""
    by_hand = httpx.get(base_url + SUMMARY, params=[("name", "a"), ("name", "b"), ("location", "DE"),
                                                    ("location", "US"), ("dateRange", "2w")]).json()["result"]
    via_lib = cf.radar.tcp_resets_timeouts.summary(name=["a", "b"], location=["DE", "US"], date_range=["2w"])
    extra = via_lib.model_extra or {}
    assert by_hand["a"] == extra["a"] == by_hand["summary_0"] and by_hand["b"] == extra["b"]


def test_docs_example_runs(base_url: str) -> None:
    """The example of docs/api.md, as written (only the address changed), against the test server."""
    doc = (REPO / "docs" / "api.md").read_text()
    m = re.search(r"### With the official Python library\n\n```python\n(.*?)```", doc, re.S)
    assert m, "docs/api.md lost its official-library example"
    code = m.group(1).replace("http://127.0.0.1:8080", base_url)
    exec(compile(code, "docs/api.md", "exec"), {"print": lambda *a, **k: None})


# ---------------------------------------------------------------- top lists: Radar's top-list models, names


def top_via_client(cf: Cloudflare, kind: str, query: dict[str, str]) -> Any:
    """rstscope's top list read the way the library reads Radar's `http/top/locations` and `http/top/ases`:
    the same request options, result unwrapping and (strict) response model."""
    from typing import cast

    from cloudflare._base_client import make_request_options
    from cloudflare._wrappers import ResultWrapper
    from cloudflare.types.radar.http.ase_get_response import AseGetResponse
    from cloudflare.types.radar.http.location_get_response import LocationGetResponse

    model: Any = LocationGetResponse if kind == "locations" else AseGetResponse
    return cf.get(f"/rstscope/top/{kind}",
                  options=make_request_options(query=query, post_parser=ResultWrapper[model]._unwrapper),
                  cast_to=cast(Any, ResultWrapper[model]))


@pytest.mark.parametrize("query", [{}, {"location": "DE"}, {"continent": "EU"}, {"asn": "13335"},
                                   {"location": "-US", "asn": "-0"}])
@pytest.mark.parametrize("kind", ["locations", "ases"])
def test_top_lists_parse_as_radar_top_lists(cf: Cloudflare, data: Data, kind: str, query: dict[str, str]) -> None:
    """clientCountryName / clientASName are what Radar's top lists carry (the library requires them)."""
    from cloudflare.types.radar.http.ase_get_response import AseGetResponse
    from cloudflare.types.radar.http.location_get_response import LocationGetResponse

    q = {"dateStart": iso(data.span[0]).strftime("%Y-%m-%dT%H:%M:%SZ"),
         "dateEnd": iso(data.span[1] - 900).strftime("%Y-%m-%dT%H:%M:%SZ"), "minConnections": "0", "limit": "100",
         **query}
    got = top_via_client(cf, kind, q)
    assert isinstance(got, LocationGetResponse if kind == "locations" else AseGetResponse)
    w = want_series({k: [v] for k, v in {"location": query.get("location"), "continent": query.get("continent"),
                                         "asn": query.get("asn")}.items() if v}, 1)[0]
    counts: dict[str, Counter[str]] = {}
    for r in data.rows:
        if r["dimension"] == "country_asn" and data.span[0] <= r["bucket_start"] < data.span[1]:
            cc, _, a = r["key"].partition(":")
            if w.accept(cc, a):
                counts.setdefault(cc if kind == "locations" else a, Counter()).update(r["counts"])
    country_names = {"DE": "Germany", "FR": "France", "US": "United States", "BR": "Brazil", "CN": "China",
                     "IR": "Iran", "AU": "Australia", "ZA": "South Africa", "XX": "Unknown"}
    if kind == "locations":
        items = {t.client_country_alpha2: t for t in got.top_0}
        assert {k: t.client_country_name for k, t in items.items()} == {k: country_names[k] for k in counts}
    else:
        items = {str(t.client_asn): t for t in got.top_0}
        assert {k: t.client_as_name for k, t in items.items()} == {
            k: ("Unknown" if k == "0" else f"Net {k}") for k in counts}
    for k, t in items.items():
        total = sum(counts[k][s] for s in STAGES)
        assert float(t.value) == pytest.approx(100.0 * (total - counts[k]["no_match"]) / total, abs=1e-6)
    assert [(u.name, u.value) for u in got.meta.units] == [("*", "connections")]


def test_meta_lists_names(base_url: str, data: Data) -> None:
    meta = httpx.get(base_url + "/rstscope/meta").json()["result"]
    ases = {x["key"]: x["name"] for x in meta["ases"]}
    assert ases == {str(a): ("Unknown" if a == 0 else f"Net {a}") for _, a in SITES}
    assert {x["key"]: x["name"] for x in meta["locations"]}["IR"] == "Iran"
