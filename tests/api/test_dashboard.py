"""The dashboard in a real browser (Debian's chromium driven by playwright): it draws the API's numbers,
follows the selector, shows country and AS names, stays readable from one 15-minute bucket (visible bars)
to a year of buckets (thinned axis labels, bounded load time), and leaves a screenshot in docs/dashboard.png."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from api.conftest import (
    AS_NAMES,
    REPO,
    RICH_START,
    STAGE_TAGS,
    Mixed,
    make_alert,
    rich_records,
    rich_rows,
    serving,
    write_alerts,
)
from rstscope.core.rollup import Rollup
from rstscope.insights.model import Alert

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() or shutil.which("chromium") is None,
                                reason="chromium is not installed (apt-get install -y chromium)")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
STAGES = ("post_syn", "post_ack", "post_psh", "later_in_flow", "no_match")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("dash")
    rollups = d / "rollups.jsonl"
    rollups.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rich_rows()))
    with serving(rollups, "rstscope.api.cli") as base:
        yield base


def wait_ready(page: Any, after: int) -> None:
    page.wait_for_function(f"window.rstscope && window.rstscope.ready && window.rstscope.generation > {after}",
                           timeout=15000)


def drawn_from_chart(page: Any) -> dict[str, list[float]]:
    """The numbers in the Chart.js instance itself (not our copy): gap markers (null) dropped."""
    got: dict[str, list[float]] = page.evaluate("""() => Object.fromEntries(Chart.getChart('chart').data.datasets
        .map(d => [d.stage, d.data.filter(p => p.y !== null).map(p => p.y)]))""")
    return got


def api_for_page(base: str, page: Any, path: str, extra: dict[str, str]) -> dict[str, Any]:
    r = page.evaluate("window.rstscope.summary.meta.dateRange[0]")
    resp = httpx.get(base + path, params={"dateStart": r["startTime"], "dateEnd": r["endTime"], **extra})
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()["result"]
    return result


def summary_on_page(page: Any) -> dict[str, str]:
    got: dict[str, str] = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        '#summary .stat[data-stage]')].map(e => [e.dataset.stage, e.dataset.value]))""")
    return got


def test_dashboard_draws_the_api_numbers(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(server + "/")
        wait_ready(page, 0)

        # The default period is the data's own span (the capture is from 2024, the clock is not).
        meta = httpx.get(server + "/rstscope/meta").json()["result"]
        rng = page.evaluate("window.rstscope.summary.meta.dateRange[0]")
        # dateEnd is inclusive: the page asks up to the start of the data's last 15-minute bucket.
        last = datetime.fromisoformat(meta["dataEnd"]) - timedelta(seconds=meta["bucketSeconds"])
        assert rng == {"startTime": meta["dataStart"], "endTime": last.strftime("%Y-%m-%dT%H:%M:%SZ")}

        world = api_for_page(server, page, "/radar/tcp_resets_timeouts/summary", {})["summary_0"]
        shown = summary_on_page(page)
        assert {s: shown[s] for s in STAGES} == world
        assert page.is_disabled("#transport button[data-transport=quic]")  # this store has no QUIC rows
        series = api_for_page(server, page, "/radar/tcp_resets_timeouts/timeseries_groups", {})["serie_0"]
        chart = drawn_from_chart(page)
        assert len(series["timestamps"]) > 100
        for s in STAGES:
            assert chart[s] == [float(v) for v in series[s]], s
        page.screenshot(path=str(REPO / "docs" / "dashboard.png"), full_page=True)

        # Select an ASN: the numbers change and match the API for that ASN.
        gen = page.evaluate("window.rstscope.generation")
        page.click("#scope button[data-scope=asn]")
        wait_ready(page, gen)
        gen = page.evaluate("window.rstscope.generation")
        page.select_option("#asn", "58224")
        wait_ready(page, gen)
        asn = api_for_page(server, page, "/radar/tcp_resets_timeouts/summary", {"asn": "58224"})["summary_0"]
        shown_asn = summary_on_page(page)
        assert {s: shown_asn[s] for s in STAGES} == asn != world
        asn_series = api_for_page(server, page, "/radar/tcp_resets_timeouts/timeseries_groups",
                                  {"asn": "58224"})["serie_0"]
        chart = drawn_from_chart(page)
        assert chart["post_psh"] == [float(v) for v in asn_series["post_psh"]]
        assert max(chart["post_psh"]) > 25  # the Post-PSH episode is visible
        page.screenshot(path=str(tmp_path / "dashboard-asn.png"), full_page=True)

        # A location from the top list (clicking a row) also switches the scope.
        gen = page.evaluate("window.rstscope.generation")
        page.click("#top-locations tr.row >> nth=0")
        wait_ready(page, gen)
        state = page.evaluate("window.rstscope.state")
        assert state["scope"] == "location"
        loc = api_for_page(server, page, "/radar/tcp_resets_timeouts/summary", {"location": state["location"]})
        assert {s: summary_on_page(page)[s] for s in STAGES} == loc["summary_0"]
        assert errors == [] and page.evaluate("window.rstscope.errors") == []
        browser.close()


# ---------------------------------------------------------------- from one bucket to a year

COLORS = {"post_syn": (0xF6, 0x82, 0x1F), "post_ack": (0xFB, 0xAD, 0x41), "post_psh": (0xD6, 0x45, 0x6B),
          "later_in_flow": (0x7B, 0x5C, 0xC4), "no_match": (0xB9, 0xC3, 0xD3)}  # style.css
# (country, asn) -> connections per stage in every bucket of the small data sets
FEW: dict[tuple[str, int], dict[str, int]] = {
    ("CN", 4134): {"post_syn": 6, "post_ack": 2, "post_psh": 4, "later_in_flow": 1, "no_match": 17},
    ("DE", 3320): {"post_syn": 2, "post_ack": 1, "post_psh": 1, "later_in_flow": 1, "no_match": 25},
    ("XX", 0): {"post_syn": 9, "no_match": 1},
}


def rows_for(buckets: Iterable[int], profile: dict[tuple[str, int], dict[str, int]],
             scale: Any = lambda b: 1) -> list[dict[str, Any]]:
    """Rollup rows (the real core's) for the same mix of connections in each bucket, scaled per bucket."""
    roll = Rollup()
    for b in buckets:
        for (cc, asn), stages in profile.items():
            for stage, n in stages.items():
                tags, sig = STAGE_TAGS[stage]
                roll.add({"window_start": b, "country": cc, "asn": asn, "as_name": AS_NAMES.get(asn, ""),
                          "last_ts": b + 60.0, "stage": stage, "tags": tags, "signature": sig}, n * scale(b))
    return list(roll.rows())


@contextlib.contextmanager
def dashboard(tmp: Path, rows: list[dict[str, Any]], ready_within: float = 15.0) -> Iterator[tuple[Any, str, float]]:
    """`rstscope serve` over the rows and a browser page on it, loaded; yields (page, base URL, load seconds)."""
    from playwright.sync_api import sync_playwright

    path = tmp / "rollups.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    with serving(path, "rstscope.api.cli") as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        t0 = time.monotonic()
        page.goto(base + "/")
        page.wait_for_function("window.rstscope && window.rstscope.ready && window.rstscope.generation > 0",
                               timeout=ready_within * 1000)
        yield page, base, time.monotonic() - t0
        assert errors == [] and page.evaluate("window.rstscope.errors") == []
        browser.close()


def stage_pixels(page: Any) -> dict[str, int]:
    """Pixels of the plot area painted in each stage's colour (what the eye sees, not the chart's model)."""
    got: dict[str, int] = page.evaluate("""(colors) => {
        const c = Chart.getChart('chart'), a = c.chartArea;
        const img = c.ctx.getImageData(a.left, a.top, a.right - a.left, a.bottom - a.top).data;
        const out = Object.fromEntries(Object.keys(colors).map((s) => [s, 0]));
        for (let i = 0; i < img.length; i += 4) {
          for (const [s, [r, g, b]] of Object.entries(colors)) {
            if (Math.abs(img[i] - r) + Math.abs(img[i + 1] - g) + Math.abs(img[i + 2] - b) <= 12) { out[s]++; break; }
          }
        }
        return out; }""", COLORS)
    return got


def tick_boxes(page: Any) -> list[dict[str, Any]]:
    """The x axis labels as drawn (after Chart.js thins them): their text and horizontal extent in pixels."""
    got: list[dict[str, Any]] = page.evaluate("""() => {
        const s = Chart.getChart('chart').scales.x, ctx = s.ctx;
        ctx.save(); ctx.font = Chart.helpers.toFont(s.options.ticks.font).string;
        const out = s.ticks.map((t, i) => {
          const lines = [].concat(t.label).map(String);
          const w = Math.max(...lines.map((l) => ctx.measureText(l).width));
          const x = s.getPixelForTick(i);
          return {text: lines.join(' '), left: x - w / 2, right: x + w / 2};
        });
        ctx.restore(); return out; }""")
    return got


def assert_readable_axis(page: Any, most: int = 14) -> list[str]:
    boxes = tick_boxes(page)
    assert 1 <= len(boxes) <= most, boxes
    for a, b in itertools.pairwise(boxes):
        assert a["right"] + 4 <= b["left"], (a, b)  # labels apart, none drawn over another
    return [b["text"] for b in boxes]


def test_one_bucket_is_drawn_as_visible_bars(tmp_path: Path) -> None:
    """A short capture (one 15-minute bucket): one stacked bar whose parts have the API's shares."""
    with dashboard(tmp_path, rows_for([RICH_START], FEW)) as (page, base, _):
        drawn = page.evaluate("window.rstscope.drawn")
        assert drawn["mode"] == "bars" and len(drawn["timestamps"]) == 1
        series = api_for_page(base, page, "/radar/tcp_resets_timeouts/timeseries_groups", {})["serie_0"]
        assert drawn_from_chart(page) == {s: [float(series[s][0])] for s in STAGES}
        bars = page.evaluate("""() => Chart.getChart('chart').data.datasets.map((d, i) => {
            const e = Chart.getChart('chart').getDatasetMeta(i).data[0];
            return {stage: d.stage, width: e.width, height: Math.abs(e.base - e.y)}; })""")
        area = page.evaluate("(() => { const a = Chart.getChart('chart').chartArea; return a.bottom - a.top; })()")
        for b in bars:
            assert b["width"] >= 20, b
            assert b["height"] == pytest.approx(area * float(series[b["stage"]][0]) / 100, abs=1.5), b
        pixels = stage_pixels(page)
        for s in STAGES:
            assert pixels[s] > 0 if float(series[s][0]) > 0 else True, (s, pixels)
        assert sum(pixels.values()) > 2000  # a bar, not a hairline
        labels = assert_readable_axis(page)
        assert labels == ["00:00 02 Sept 2024"]
        # Names: the top lists and selectors say who, not only a number.
        assert "AS4134 CHINANET-BACKBONE" in page.inner_text("#top-ases").replace("\t", " ")
        assert "China CN" in page.inner_text("#top-locations").replace("\t", " ")
        options = page.eval_on_selector_all("#asn option", "os => os.map((o) => o.textContent)")
        assert any(o.startswith("AS4134 CHINANET-BACKBONE") for o in options), options
        page.screenshot(path=str(tmp_path / "dashboard-one-bucket.png"), full_page=True)


def test_isolated_points_of_an_area_get_markers(tmp_path: Path) -> None:
    """Two buckets a day apart: 97 slots at 15 minutes (an area), each bucket alone between gaps: a marker."""
    rows = rows_for([RICH_START, RICH_START + 86400], FEW)
    with dashboard(tmp_path, rows) as (page, _, _):
        drawn = page.evaluate("window.rstscope.drawn")
        assert drawn["mode"] == "area" and len(drawn["timestamps"]) == 97 and drawn["isolated"] == 2
        marks = page.evaluate("""() => { const c = Chart.getChart('chart');
            return c.getDatasetMeta(0).data.filter((e) => e.options.radius > 0 && !e.skip)
              .map((e) => ({x: e.x, y: e.y, r: e.options.radius})); }""")
        assert len(marks) == 2 and all(m["r"] >= 3 for m in marks)
        assert stage_pixels(page)["post_syn"] > 20  # the markers are painted
        assert_readable_axis(page)


def test_a_year_of_buckets_loads_and_stays_readable(tmp_path: Path) -> None:
    """35,040 buckets (a year at 15 minutes): the page is ready in bounded time, the axis is thinned, names
    are shown, and intervals that would exceed the API's point limit cannot be chosen."""
    import math

    start = 1704067200  # 2024-01-01T00:00:00Z
    buckets = [start + i * 900 for i in range(35040)]
    profile = {k: {s: n for s, n in v.items() if s in ("post_syn", "post_psh", "no_match")} for k, v in FEW.items()}
    rows = rows_for(buckets, profile, lambda b: 1 + int(2 * (1 + math.sin(2 * math.pi * (b - start) / 86400))))
    assert len({r["bucket_start"] for r in rows}) == 35040
    with dashboard(tmp_path, rows, ready_within=30.0) as (page, base, seconds):
        assert seconds < 30
        drawn = page.evaluate("window.rstscope.drawn")
        assert drawn["mode"] == "area" and 360 <= len(drawn["timestamps"]) <= 367  # auto: one day a point
        labels = assert_readable_axis(page, most=8)
        assert any("2024" in x for x in labels), labels
        assert "AS4134 CHINANET-BACKBONE" in page.inner_text("#top-ases").replace("\t", " ")
        disabled = page.eval_on_selector_all("#agg option", "os => os.filter((o) => o.disabled).map((o) => o.value)")
        assert disabled == ["15m", "1h"]  # 35,040 and 8,760 points: over the API's 5,000
        page.screenshot(path=str(tmp_path / "dashboard-year-daily.png"), full_page=True)
        gen = page.evaluate("window.rstscope.generation")
        page.select_option("#agg", "1w")
        wait_ready(page, gen)
        drawn = page.evaluate("window.rstscope.drawn")
        assert drawn["mode"] == "bars" and 52 <= len(drawn["timestamps"]) <= 54
        assert stage_pixels(page)["post_psh"] > 0
        assert_readable_axis(page, most=14)
        api = api_for_page(base, page, "/radar/tcp_resets_timeouts/timeseries_groups", {"aggInterval": "1w"})
        assert drawn_from_chart(page)["post_psh"] == [float(v) for v in api["serie_0"]["post_psh"]]
        page.screenshot(path=str(tmp_path / "dashboard-year.png"), full_page=True)


# ---------------------------------------------------------------- alerts and outliers

MX = {8151: ("Uno Telcel", 0.45), 13999: ("Mega Cable", 0.03), 28548: ("Cablevision", 0.04)}  # Post-ACK share


def mx_records(days: int = 3) -> Iterator[dict[str, Any]]:
    """Three Mexican ASes over the rich data's days; one (the Telcel case) ends ~45% of its connections
    after the handshake (SNI-based zero-rating), its peers ~4%."""
    import random

    rnd = random.Random(7)
    for i in range(days * 96):
        b = RICH_START + i * 900
        for asn, (name, post_ack) in MX.items():
            for _ in range(rnd.randint(25, 35)):
                u = rnd.random()
                stage = "post_ack" if u < post_ack else "post_syn" if u < post_ack + 0.05 else "no_match"
                tags, sig = STAGE_TAGS[stage]
                yield {"window_start": b, "country": "MX", "asn": asn, "as_name": name, "stage": stage,
                       "tags": tags, "signature": sig}


def insight_rows() -> list[dict[str, Any]]:
    roll = Rollup()
    roll.extend(rich_records())
    roll.extend(mx_records())
    return list(roll.rows())


def episode_alert(rows: list[dict[str, Any]], dimension: str, key: str, name: str) -> Alert:
    """The alert the rich data's Post-PSH episode (buckets 130..170) makes, with its shares from the rows:
    observed over the episode, baseline over the same hours of day 0."""
    def share(first: int, last: int) -> tuple[float, int]:
        mine = [r for r in rows if r["dimension"] == dimension and r["key"] == key
                and RICH_START + first * 900 <= r["bucket_start"] < RICH_START + last * 900]
        total = sum(r["total"] for r in mine)
        return 100 * sum(r["counts"].get("post_psh", 0) for r in mine) / total, total

    observed, n = share(130, 170)
    baseline, _ = share(130 - 96, 170 - 96)
    return make_alert(dimension, key, "post_psh", RICH_START + 130 * 900, RICH_START + 170 * 900,
                      size_pp=round(observed - baseline, 2), baseline_share=round(baseline, 2), name=name,
                      connections=n)


def band_color(page: Any, x: float, y: float) -> tuple[int, int, int]:
    got = page.evaluate("([x, y]) => Array.from(Chart.getChart('chart').ctx.getImageData(x, y, 1, 1).data)", [x, y])
    return got[0], got[1], got[2]


def test_dashboard_draws_alerts_and_outliers(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    rows = insight_rows()
    ir_as = episode_alert(rows, "country_asn", "IR:58224", AS_NAMES[58224])
    ir = episode_alert(rows, "country", "IR", "Iran")
    scanner = make_alert("asn", "4134", "post_syn", RICH_START + 2 * 86400 + 2 * 3600, None, size_pp=18.0,
                         baseline_share=20.0, recurring=True, name=AS_NAMES[4134])
    rollups = tmp_path / "rollups.jsonl"
    rollups.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    alerts = write_alerts(tmp_path / "alerts.jsonl", [ir_as, ir, scanner])
    with serving(rollups, "rstscope.api.cli", alerts=alerts) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/")
        wait_ready(page, 0)

        # The alerts of the range, from the API, are the ones listed and drawn (newest first).
        listed = api_for_page(base, page, "/rstscope/alerts", {"limit": "200"})["alerts"]
        assert [a["id"] for a in listed] == [scanner.id, ir.id, ir_as.id]
        assert [a["id"] for a in page.evaluate("window.rstscope.alerts")] == [a["id"] for a in listed]
        rows_shown = page.eval_on_selector_all("#alerts .alert", "rs => rs.map((r) => [r.dataset.id, r.innerText])")
        assert [r[0] for r in rows_shown] == [a["id"] for a in listed]
        assert "recurring daily" in rows_shown[0][1] and "open" in rows_shown[0][1]
        assert f"+{ir_as.size_pp:.1f} pp" in rows_shown[2][1] and "AS58224" in rows_shown[2][1]
        bands = {b["id"]: b for b in page.evaluate("window.rstscope.alertBands")}
        assert set(bands) == {a.id for a in (ir_as, ir, scanner)}
        # Each range sits where its times are on the time axis (area chart: the x scale is time).
        for a in (ir_as, scanner):
            b = bands[a.id]
            x1 = page.evaluate("(t) => Chart.getChart('chart').scales.x.getPixelForValue(t)", a.start * 1000)
            assert b["x1"] == pytest.approx(x1, abs=1)
            if a.end is not None:
                x2 = page.evaluate("(t) => Chart.getChart('chart').scales.x.getPixelForValue(t)", a.end * 1000)
                assert b["x2"] == pytest.approx(x2, abs=1) and b["x2"] - b["x1"] > 30
            else:  # open: to the end of the chart
                assert b["x2"] == pytest.approx(page.evaluate("Chart.getChart('chart').chartArea.right"), abs=1)
        # Painted: the strip at the top of a range has its stage's colour.
        b = bands[ir_as.id]
        assert band_color(page, (b["x1"] + b["x2"]) / 2, b["top"] + 3) == COLORS["post_psh"]
        b = bands[scanner.id]
        assert band_color(page, (b["x1"] + b["x2"]) / 2, b["top"] + 3) == COLORS["post_syn"]
        # Hovering a range shows its tooltip: network, stage, size, recurring.
        box = page.eval_on_selector("#chart", "c => { const r = c.getBoundingClientRect(); return [r.left, r.top]; }")
        page.mouse.move(box[0] + (b["x1"] + b["x2"]) / 2, box[1] + (b["top"] + b["bottom"]) / 2)
        page.wait_for_selector("#alert-tip:not([hidden])")
        tip = page.inner_text("#alert-tip")
        assert "AS4134 CHINANET-BACKBONE" in tip and "Post-SYN rose +18.0 pp" in tip and "recurring daily" in tip
        b = bands[ir_as.id]
        page.mouse.move(box[0] + (b["x1"] + b["x2"]) / 2, box[1] + (b["top"] + b["bottom"]) / 2)
        page.wait_for_function(f"document.getElementById('alert-tip').dataset.ids.includes('{ir_as.id}')")
        tip = page.inner_text("#alert-tip")
        assert f"AS58224 {AS_NAMES[58224]} in Iran" in tip and f"+{ir_as.size_pp:.1f} pp" in tip

        # Outliers: the table is the API's ranking (ASes against their country): the Telcel case first.
        outliers = api_for_page(base, page, "/rstscope/outliers", {"dimension": "country_asn", "limit": "10"})
        keys = page.eval_on_selector_all("#outliers tr.row", "rs => rs.map((r) => r.dataset.key)")
        assert keys == [o["key"] for o in outliers["outliers"]] and keys[0] == "MX:8151"
        first = page.inner_text("#outliers tr.row >> nth=0")
        top = outliers["outliers"][0]
        assert "AS8151 in MX" in first and "Uno Telcel" in first and "Mexico" in first and "Post-ACK" in first
        assert f"{top['distance']:.1f} pp" in first and f"vs {top['peer_share']:.2f}%" in first
        page.mouse.move(0, 0)
        page.screenshot(path=str(REPO / "docs" / "dashboard-insights.png"), full_page=True)

        # ASes against the world: another ranking, from the API again.
        gen = page.evaluate("window.rstscope.generation")
        page.select_option("#outlier-dim", "asn")
        wait_ready(page, gen)
        by_asn = api_for_page(base, page, "/rstscope/outliers", {"dimension": "asn", "limit": "10"})["outliers"]
        assert page.eval_on_selector_all("#outliers tr.row", "rs => rs.map((r) => r.dataset.key)") == \
            [o["key"] for o in by_asn] != []

        # One AS: its alerts only (the AS, and the AS in a country), drawn on its own series.
        gen = page.evaluate("window.rstscope.generation")
        page.click("#scope button[data-scope=asn]")
        wait_ready(page, gen)
        gen = page.evaluate("window.rstscope.generation")
        page.select_option("#asn", "58224")
        wait_ready(page, gen)
        assert [a["id"] for a in page.evaluate("window.rstscope.alerts")] == [ir_as.id]
        assert [b["id"] for b in page.evaluate("window.rstscope.alertBands")] == [ir_as.id]
        assert errors == [] and page.evaluate("window.rstscope.errors") == []
        browser.close()


# ---------------------------------------------------------------- transports


def test_the_transport_selector_shows_quic(tmp_path: Path, mixed: Mixed) -> None:
    """A store of both transports (real records: TCP fixtures' analyze, the QUIC bed's `rstscope quic`): the
    page starts on TCP, the selector switches every number to QUIC's and back."""
    rows = [orjson.loads(line) for line in mixed.rollups.read_bytes().splitlines()]
    summary = "/radar/tcp_resets_timeouts/summary"
    with dashboard(tmp_path, rows) as (page, base, _):
        assert page.evaluate("window.rstscope.state.transport") == "tcp"
        tcp = api_for_page(base, page, summary, {})["summary_0"]
        assert {s: summary_on_page(page)[s] for s in STAGES} == tcp
        assert not page.is_disabled("#transport button[data-transport=quic]")

        gen = page.evaluate("window.rstscope.generation")
        page.click("#transport button[data-transport=quic]")
        wait_ready(page, gen)
        assert page.evaluate("window.rstscope.meta.transport") == "quic"
        quic = api_for_page(base, page, summary, {"transport": "quic"})["summary_0"]
        assert {s: summary_on_page(page)[s] for s in STAGES} == quic != tcp
        assert quic["post_syn"] == "28.571429"  # 10 of the bed's 35 attempts never got past their Initials
        series = api_for_page(base, page, "/radar/tcp_resets_timeouts/timeseries_groups",
                              {"transport": "quic"})["serie_0"]
        chart = drawn_from_chart(page)
        for s in STAGES:
            assert chart[s] == [float(v) for v in series[s]], s
        assert page.evaluate("window.rstscope.tags.meta.connections") == len(mixed.quic_records)
        assert page.evaluate("window.rstscope.signatures.breakdown_0") == []
        assert "QUIC" in page.inner_text("#title") and "Initials" in page.inner_text("#summary")
        page.screenshot(path=str(REPO / "docs" / "dashboard-quic.png"), full_page=True)

        # An AS of the QUIC rows: the numbers are QUIC's for that AS.
        gen = page.evaluate("window.rstscope.generation")
        page.click("#scope button[data-scope=asn]")
        wait_ready(page, gen)
        asn = page.evaluate("window.rstscope.state.asn")
        assert asn in {str(r["asn"]) for r in mixed.quic_records}
        want = api_for_page(base, page, summary, {"transport": "quic", "asn": asn})["summary_0"]
        assert {s: summary_on_page(page)[s] for s in STAGES} == want

        # Back to TCP, worldwide: TCP's numbers again.
        gen = page.evaluate("window.rstscope.generation")
        page.click("#scope button[data-scope=world]")
        wait_ready(page, gen)
        gen = page.evaluate("window.rstscope.generation")
        page.click("#transport button[data-transport=tcp]")
        wait_ready(page, gen)
        assert {s: summary_on_page(page)[s] for s in STAGES} == api_for_page(base, page, summary, {})["summary_0"]
        assert "TCP" in page.inner_text("#title")
