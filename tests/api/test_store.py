"""The store keeps the latest row per (bucket_start, dimension, key): loading twice changes nothing."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from rstscope.api.query import Filters, KeyFilter
from rstscope.api.store import BadRow, Store, normalize_row


def test_upsert_is_idempotent(rows: list[dict[str, Any]]) -> None:
    s = Store()
    assert s.upsert(rows) == len(rows)
    before = [s.get((r["bucket_start"], r["dimension"], r["key"])) for r in rows]
    s.upsert(rows)
    s.upsert(reversed(rows))
    assert s.row_count() == len(rows)
    assert [s.get((r["bucket_start"], r["dimension"], r["key"])) for r in rows] == before


def test_a_row_replaces_the_previous_one_with_the_same_key(rows: list[dict[str, Any]]) -> None:
    s = Store()
    world = next(r for r in rows if r["dimension"] == "world")
    s.upsert([world])
    grown = copy.deepcopy(world)
    grown["counts"]["post_syn"] += 5
    grown["total"] += 5
    grown["tags"] = {"reset": 1}
    s.upsert([grown])
    got = s.get((world["bucket_start"], "world", ""))
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
    got = s.get((a["bucket_start"], "world", ""))
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
    got = s.get((r["bucket_start"], r["dimension"], r["key"]))
    assert got is not None and got["total"] == sum(r["counts"].values())


def test_delete_and_exclusion_never_goes_negative(rows: list[dict[str, Any]]) -> None:
    s = Store()
    s.upsert(rows)
    b = rows[0]["bucket_start"]
    s.delete([(b, "world", "")])
    assert s.get((b, "world", "")) is None
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
