"""The dashboard in a real browser (Debian's chromium driven by playwright): it draws the API's numbers,
follows the selector, and leaves a screenshot in docs/dashboard.png."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from api.conftest import REPO, rich_rows, serving

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
