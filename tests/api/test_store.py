"""The store keeps the latest row per (bucket_start, dimension, key): loading twice changes nothing."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from rstscope.api.query import Filters, KeyFilter
from rstscope.api.store import _COLS, BadRow, Store, normalize_row
from rstscope.core.classify import STAGES
from rstscope.core.rollup import row_key_of


def test_upsert_is_idempotent(rows: list[dict[str, Any]]) -> None:
    s = Store()
    assert s.upsert(rows) == len(rows)
    before = [s.get(row_key_of(r)) for r in rows]
    s.upsert(rows)
    s.upsert(reversed(rows))
    assert s.row_count() == len(rows)
    assert [s.get(row_key_of(r)) for r in rows] == before


def test_a_row_replaces_the_previous_one_with_the_same_key(rows: list[dict[str, Any]]) -> None:
    s = Store()
    world = next(r for r in rows if r["dimension"] == "world")
    s.upsert([world])
    grown = copy.deepcopy(world)
    grown["counts"]["post_syn"] += 5
    grown["total"] += 5
    grown["tags"] = {"reset": 1}
    s.upsert([grown])
    got = s.get((world["bucket_start"], "world", "", "tcp"))
    assert got is not None
    assert got["counts"]["post_syn"] == world["counts"]["post_syn"] + 5
    assert got["tags"] == {"reset": 1}  # replaced, not merged
    assert s.row_count() == 1


def test_last_duplicate_in_a_batch_wins(rows: list[dict[str, Any]]) -> None:
    s = Store()
    a = next(r for r in rows if r["dimension"] == "world")
    b = copy.deepcopy(a)
    b["counts"]["no_match"] = 0
    s.upsert([a, b])
    got = s.get((a["bucket_start"], "world", "", "tcp"))
    assert got is not None and got["counts"]["no_match"] == 0


def test_load_file_twice_and_real_analyze_output(analyzed: tuple[Path, Path], tmp_path: Path) -> None:
    rollups, _ = analyzed
    s = Store(tmp_path / "x.duckdb")
    n = s.load_rollups(rollups)
    assert n > 0 and s.load_rollups(rollups) == n and s.row_count() == n
    s.close()
    reopened = Store(tmp_path / "x.duckdb", read_only=True, hold=False)
    assert reopened.row_count() == n
    world = [r for r in map(orjson.loads, rollups.read_bytes().splitlines()) if r["dimension"] == "world"]
    span = reopened.span()
    assert span is not None
    agg = reopened.per_bucket(Filters(), span[0], span[1])
    assert sum(a.total for a in agg.values()) == sum(r["total"] for r in world) > 0


@pytest.mark.parametrize("mutate", [
    lambda r: r.update(v=2),
    lambda r: r.update(dimension="city"),
    lambda r: r.update(key="DE") if r["dimension"] == "world" else r.update(key=""),
    lambda r: r.update(bucket_start=r["bucket_start"] + 1),
    lambda r: r["counts"].update(post_syn=-1),
    lambda r: r["counts"].update(post_syn="3"),
    lambda r: r.update(tags=[]),
])
def test_bad_rows_are_rejected(rows: list[dict[str, Any]], mutate: Any) -> None:
    r = copy.deepcopy(rows[0])
    mutate(r)
    with pytest.raises(BadRow):
        normalize_row(r)


def test_bad_file_names_the_line(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    p = tmp_path / "r.jsonl"
    p.write_bytes(orjson.dumps(rows[0]) + b"\n{not json\n")
    with pytest.raises(BadRow, match="line 2"):
        Store().load_rollups(p)


def test_total_is_recomputed_from_counts(rows: list[dict[str, Any]]) -> None:
    r = copy.deepcopy(rows[0])
    r["total"] = 999999
    s = Store()
    s.upsert([r])
    got = s.get(row_key_of(r))
    assert got is not None and got["total"] == sum(r["counts"].values())


def test_delete_and_exclusion_never_goes_negative(rows: list[dict[str, Any]]) -> None:
    s = Store()
    s.upsert(rows)
    b = rows[0]["bucket_start"]
    s.delete([(b, "world", "", "tcp")])
    assert s.get((b, "world", "", "tcp")) is None
    # The world row of bucket b is gone: "all but DE" has nothing to subtract from there.
    aggs = s.per_bucket(Filters(KeyFilter(exclude=frozenset({"DE"}))), b, b + 900)
    assert aggs == {}


def test_writer_and_reader_share_a_file(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    """hold=False: the sink holds the lock only while writing, so serve's reader can open the file."""
    path = tmp_path / "shared.duckdb"
    writer = Store(path, hold=False)
    reader = Store(path, read_only=True, hold=False)
    writer.upsert(rows[:10])
    assert reader.row_count() == 10
    writer.upsert(rows)
    assert reader.row_count() == len(rows)


def test_cli_rejects_missing_files_and_connections_without_flag(tmp_path: Path) -> None:
    from rstscope.api.cli import main

    assert main(["serve", "--rollups", str(tmp_path / "missing.jsonl")]) == 2
    f = tmp_path / "c.jsonl"
    f.write_text("")
    assert main(["serve", "--connections", str(f)]) == 2


# ---------------------------------------------------------------- names (wire format v1, additive)


def test_names_travel_with_the_rows(rows: list[dict[str, Any]]) -> None:
    s = Store()
    s.upsert(rows)
    assert s.names("asn") == {"3320": "DTAG Internet service provider operations", "6805": "TDDE-ASN1",
                              "3215": "Orange", "7922": "COMCAST-7922"}  # AS 0 has none
    assert s.names("country") == {"DE": "Germany", "FR": "France", "US": "United States"}
    r = next(r for r in rows if r["dimension"] == "asn" and r["key"] == "3215")
    assert s.get((r["bucket_start"], "asn", "3215", "tcp")) == {k: v for k, v in r.items() if k != "shares"}


def test_the_most_recent_non_empty_name_is_kept(rows: list[dict[str, Any]]) -> None:
    s = Store()
    asn = sorted((r for r in rows if r["dimension"] == "asn" and r["key"] == "3320"), key=lambda r: r["bucket_start"])
    old, new, newest = copy.deepcopy(asn[0]), copy.deepcopy(asn[1]), copy.deepcopy(asn[2])
    old["name"], new["name"] = "Old Name", "New Name"
    newest.pop("name")  # a producer without the name (older version, or a rebuilt worker) erases nothing
    s.upsert([new, newest])
    s.upsert([old])  # replayed late: an older bucket does not win
    assert s.names("asn") == {"3320": "New Name"}
    s.delete([(new["bucket_start"], "asn", "3320", "tcp")])
    assert s.names("asn") == {"3320": "Old Name"}


def test_names_are_validated_and_bounded(rows: list[dict[str, Any]]) -> None:
    r = copy.deepcopy(next(r for r in rows if r["dimension"] == "asn"))
    r["name"] = 42
    with pytest.raises(BadRow, match="name"):
        normalize_row(r)
    r["name"] = "  " + "x" * 1000
    assert dict(zip(_COLS, normalize_row(r), strict=True))["name"] == "x" * 256
    world = copy.deepcopy(next(r for r in rows if r["dimension"] == "world"))
    world["name"] = "ignored"
    assert dict(zip(_COLS, normalize_row(world), strict=True))["name"] == ""  # only country and asn rows are named


# The rollups table as the first release created it (before names and transports), spelled out: the
# store's own schema moves on, this must not.
FIRST_RELEASE = f"""CREATE TABLE rollups (bucket_start BIGINT NOT NULL, dimension VARCHAR NOT NULL,
  key VARCHAR NOT NULL, bucket_s INTEGER NOT NULL, total BIGINT NOT NULL,
  {", ".join(f"{s} BIGINT NOT NULL" for s in STAGES)}, tags VARCHAR NOT NULL, signatures VARCHAR NOT NULL,
  post_syn_geo_unreliable BIGINT NOT NULL, updated_at DOUBLE NOT NULL, PRIMARY KEY (bucket_start, dimension, key))"""


def test_a_store_file_from_before_names_gets_the_column(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(FIRST_RELEASE)  # the table as the first release made it
    con.close()
    s = Store(path)
    s.upsert(rows)
    assert s.names("country")["DE"] == "Germany"
