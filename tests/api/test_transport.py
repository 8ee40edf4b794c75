"""The API per transport (issue 17): `transport=tcp|quic` on every endpoint that reads rows, TCP by default
and byte for byte what a store without QUIC answers; QUIC numbers from real QUIC records; bad values are
Radar 400s. Also the sink's two key forms and a store file from before transports."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from fastapi.testclient import TestClient

from api.conftest import NOW, Mixed, make_alert
from api.test_sink import Msg
from rstscope.api.app import create_app
from rstscope.api.sink import SinkStats, apply_batch, parse_key
from rstscope.api.store import _COLS, Store, StoreError, normalize_row
from rstscope.core.classify import STAGES
from rstscope.core.rollup import row_key_of, row_key_text

ROW_ENDPOINTS = ["/radar/tcp_resets_timeouts/summary", "/radar/tcp_resets_timeouts/timeseries_groups",
                 "/rstscope/tags", "/rstscope/signatures", "/rstscope/top/locations", "/rstscope/top/ases",
                 "/rstscope/alerts", "/rstscope/outliers"]


def client_of(*files: Path) -> TestClient:
    s = Store()
    for f in files:
        s.load_rollups(f)
    span = s.span()
    assert span is not None
    bucket = span[0]
    s.upsert_alerts([make_alert("world", "", "post_syn", bucket, bucket + 3600)])  # a TCP alert
    return TestClient(create_app(s, now=lambda: NOW))


@pytest.fixture(scope="module")
def both(mixed: Mixed) -> TestClient:
    return client_of(mixed.rollups)


@pytest.fixture(scope="module")
def tcp_only(mixed: Mixed) -> TestClient:
    return client_of(mixed.tcp_rollups)


def quic_range(client: TestClient) -> dict[str, str]:
    m = client.get("/rstscope/meta", params={"transport": "quic"}).json()["result"]
    return {"dateStart": m["dataStart"], "dateEnd": m["dataStart"]}  # the QUIC bed is one bucket


def tcp_range(client: TestClient) -> dict[str, str]:
    m = client.get("/rstscope/meta").json()["result"]
    return {"dateStart": m["dataStart"], "dateEnd": m["dataEnd"]}


def percent(n: int, total: int) -> str:
    return f"{100 * n / total:.6f}".rstrip("0").rstrip(".")


@pytest.mark.parametrize("path", [*ROW_ENDPOINTS, "/rstscope/meta"])
@pytest.mark.parametrize("fmt", ["JSON", "CSV"])
def test_tcp_by_default_is_what_a_store_without_quic_answers(both: TestClient, tcp_only: TestClient, path: str,
                                                             fmt: str) -> None:
    params = {} if path == "/rstscope/meta" else {**tcp_range(tcp_only), "format": fmt}
    if path == "/rstscope/meta" and fmt == "CSV":
        pytest.skip("meta is JSON only")
    a, b = both.get(path, params=params), tcp_only.get(path, params=params)
    assert a.status_code == b.status_code == 200, a.text
    if path == "/rstscope/meta":  # the one difference: which transports the store has
        ja, jb = a.json(), b.json()
        assert (ja["result"].pop("transports"), jb["result"].pop("transports")) == (["tcp", "quic"], ["tcp"])
        assert ja == jb
    else:
        assert a.content == b.content
        assert both.get(path, params={**params, "transport": "tcp"}).content == b.content  # explicit = default


def test_quic_summary_counts_the_quic_records(both: TestClient, mixed: Mixed) -> None:
    stages = Counter(r["stage"] for r in mixed.quic_records)
    want = {s: percent(stages[s], len(mixed.quic_records)) if stages[s] else "0" for s in STAGES}
    r = both.get("/radar/tcp_resets_timeouts/summary", params={**quic_range(both), "transport": "quic"})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["summary_0"] == want
    assert want["post_syn"] == "28.571429" and want["later_in_flow"] == "0"  # 10 of 35 (docs/quic.md)
    notes = r.json()["result"]["meta"]["confidenceInfo"]["annotations"]
    assert not [n for n in notes if n["eventType"] == "TRAFFIC_ANOMALY"]  # TCP's alerts never annotate QUIC
    csv = both.get("/radar/tcp_resets_timeouts/summary", params={**quic_range(both), "transport": "quic",
                                                                "format": "CSV"})
    assert csv.text == ",".join(STAGES) + "\n" + ",".join(want[s] for s in STAGES) + "\n"


def test_tcp_and_quic_series_in_one_request(both: TestClient, mixed: Mixed) -> None:
    rng = quic_range(both)
    two = both.get("/radar/tcp_resets_timeouts/summary",
                   params=[("transport", "tcp"), ("transport", "quic"), *rng.items()]).json()["result"]
    one = both.get("/radar/tcp_resets_timeouts/summary", params={**rng, "transport": "quic"}).json()["result"]
    assert two["summary_1"] == one["summary_0"] and two["summary_0"] != two["summary_1"]


def test_quic_timeseries(both: TestClient, mixed: Mixed) -> None:
    rng = quic_range(both)
    r = both.get("/radar/tcp_resets_timeouts/timeseries_groups", params={**rng, "transport": "quic",
                                                                         "aggInterval": "15m"})
    serie = r.json()["result"]["serie_0"]
    assert serie["timestamps"] == [rng["dateStart"]] and serie["post_syn"] == ["28.571429"]
    csv = both.get("/radar/tcp_resets_timeouts/timeseries_groups", params={**rng, "transport": "quic",
                                                                           "aggInterval": "15m", "format": "CSV"})
    assert csv.text.splitlines()[1].startswith(f"{rng['dateStart']},28.571429,")


def test_quic_breakdowns_tops_alerts_outliers(both: TestClient, mixed: Mixed) -> None:
    p = {**quic_range(both), "transport": "quic"}
    tags = both.get("/rstscope/tags", params=p).json()["result"]
    want = Counter(t for r in mixed.quic_records for t in r["tags"])
    assert {i["name"]: i["count"] for i in tags["breakdown_0"]} == dict(want)  # QUIC's tags, as they occur
    assert tags["meta"]["connections"] == len(mixed.quic_records)
    assert both.get("/rstscope/signatures", params=p).json()["result"]["breakdown_0"] == []  # none for QUIC
    assert both.get("/rstscope/signatures", params={**p, "format": "CSV"}).text == "name,count,share\n"
    top = both.get("/rstscope/top/locations", params={**p, "minConnections": "1"}).json()["result"]["top_0"]
    per_cc = Counter(r["country"] for r in mixed.quic_records)
    assert {i["clientCountryAlpha2"]: i["connections"] for i in top} == dict(per_cc)
    ases = both.get("/rstscope/top/ases", params={**p, "minConnections": "1", "format": "CSV"}).text
    assert ases.startswith("clientASN,clientASName,value,connections,")
    assert sum(int(line.split(",")[3]) for line in ases.splitlines()[1:]) == len(mixed.quic_records)
    alerts = both.get("/rstscope/alerts", params=p).json()["result"]
    assert alerts["alerts"] == [] and alerts["meta"]["count"] == 0  # alerts are of TCP rows (docs/insights.md)
    assert both.get("/rstscope/alerts", params=tcp_range(both)).json()["result"]["meta"]["count"] == 1
    out = both.get("/rstscope/outliers", params={**p, "dimension": "asn"})
    assert out.status_code == 200 and out.json()["result"]["meta"]["dimension"] == "asn"


def test_meta_per_transport(both: TestClient, mixed: Mixed) -> None:
    m = both.get("/rstscope/meta", params={"transport": "quic"}).json()["result"]
    assert m["transport"] == "quic" and m["transports"] == ["tcp", "quic"]
    assert m["rows"] == len(mixed.quic_rows)
    assert sum(k["connections"] for k in m["locations"]) == len(mixed.quic_records)
    assert both.get("/rstscope/meta").json()["result"]["transport"] == "tcp"


@pytest.mark.parametrize("path", [*ROW_ENDPOINTS, "/rstscope/meta"])
@pytest.mark.parametrize("value", ["udp", "", "tcp,quic"])
def test_an_unknown_transport_is_a_radar_400(both: TestClient, path: str, value: str) -> None:
    if value == "" and path.startswith("/radar"):
        pytest.skip("an empty value of a Radar array parameter is 'not set' (docs/api.md)")
    r = both.get(path, params={"transport": value})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["success"] is False and body["result"] == {} and body["errors"][0]["code"] == 2001
    assert "transport" in body["errors"][0]["message"]


def test_transport_is_case_insensitive(both: TestClient) -> None:
    p = quic_range(both)
    a = both.get("/radar/tcp_resets_timeouts/summary", params={**p, "transport": "QUIC"})
    b = both.get("/radar/tcp_resets_timeouts/summary", params={**p, "transport": "quic"})
    assert a.status_code == 200 and a.content == b.content


# ---------------------------------------------------------------- sink and store


def test_the_sink_reads_both_key_forms(mixed: Mixed) -> None:
    quic_row = next(r for r in mixed.quic_rows if r["dimension"] == "world")
    tcp_row = copy.deepcopy(quic_row)
    tcp_row.pop("transport")  # a TCP row as producers before transports wrote it: no field
    tk, qk = row_key_text(row_key_of(tcp_row)), row_key_text(row_key_of(quic_row))
    assert qk == tk + "|quic" and parse_key(tk.encode()) == row_key_of(tcp_row)
    assert parse_key(qk.encode()) == row_key_of(quic_row) and parse_key(b"1|world||sctp") is None
    s, stats = Store(), SinkStats()
    apply_batch(s, [Msg(tk.encode(), orjson.dumps(tcp_row)), Msg(qk.encode(), orjson.dumps(quic_row))], stats)
    assert stats.upserted == 2 and s.row_count() == 2 and s.transports() == ["tcp", "quic"]
    apply_batch(s, [Msg(qk.encode(), None)], stats)  # a QUIC tombstone deletes the QUIC row only
    assert s.row_count() == 1 and s.get(row_key_of(tcp_row)) is not None and s.get(row_key_of(quic_row)) is None


def test_rows_of_an_unknown_transport_are_refused(mixed: Mixed) -> None:
    from rstscope.api.store import BadRow

    with pytest.raises(BadRow, match="transport"):
        normalize_row({**mixed.quic_rows[0], "transport": "sctp"})


# The rollups table of the release before transports (with names), spelled out.
BEFORE_TRANSPORTS = f"""CREATE TABLE rollups (bucket_start BIGINT NOT NULL, dimension VARCHAR NOT NULL,
  key VARCHAR NOT NULL, bucket_s INTEGER NOT NULL, total BIGINT NOT NULL,
  {", ".join(f"{s} BIGINT NOT NULL" for s in STAGES)}, tags VARCHAR NOT NULL, signatures VARCHAR NOT NULL,
  post_syn_geo_unreliable BIGINT NOT NULL, updated_at DOUBLE NOT NULL, name VARCHAR DEFAULT '',
  PRIMARY KEY (bucket_start, dimension, key))"""


def test_a_store_file_from_before_transports_is_migrated(tmp_path: Path, rows: list[dict[str, Any]],
                                                         mixed: Mixed) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(BEFORE_TRANSPORTS)
    old = [c for c in _COLS if c != "transport"]
    con.executemany(f"INSERT INTO rollups ({', '.join(old)}) VALUES ({', '.join('?' for _ in old)})",
                    [normalize_row(r)[:-1] for r in rows])
    con.close()
    with pytest.raises(StoreError, match="before transports"):
        Store(path, read_only=True)  # read-only, it cannot be migrated: it says so
    s = Store(path)  # opened for writing, as `serve --db` and `sink` do: rebuilt with the column
    assert s.row_count() == s.row_count("tcp") == len(rows) and s.transports() == ["tcp"]
    assert all(s.get(row_key_of(r)) == {k: v for k, v in {**r, "transport": "tcp"}.items() if k != "shares"}
               for r in rows[:20])
    world = next(r for r in rows if r["dimension"] == "world")
    s.upsert([{**world, "transport": "quic"}])  # the same (bucket, dimension, key) of QUIC: a row of its own
    assert s.row_count() == len(rows) + 1 and s.get(row_key_of(world)) is not None
    s.close()
    again = Store(path)  # a second open finds nothing to migrate
    assert again.row_count() == len(rows) + 1 and again.transports() == ["tcp", "quic"]
    again.close()
    ro = Store(path, read_only=True, hold=False)
    assert ro.row_count("quic") == 1
