"""--out / --rollups as JSON lines, CSV or Parquet (by extension), the Python API and docs/outputs.md."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

import rstscope
from rstscope.cli import main
from rstscope.outputs import (
    CSV,
    JSONL,
    PARQUET,
    MissingExtra,
    ParquetWriter,
    flatten,
    format_of,
    record_fields,
    record_schema,
)

pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.pcap"
FIXTURE = ROOT / "tests" / "fixtures" / "abort_post_psh.pcap"
CAPTURES = [DEMO, FIXTURE]


def run(capsys: pytest.CaptureFixture[str], cap: Path, *args: str) -> dict[str, Any]:
    assert main(["analyze", str(cap), *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str], cap: Path, ext: str) -> tuple[Path, Path]:
    """One run writing JSON lines and another writing ``ext``: (records, rollups) of the second."""
    run(capsys, cap, "--out", str(tmp_path / "c.jsonl"), "--rollups", str(tmp_path / "r.jsonl"))
    out, rollups = tmp_path / f"c.{ext}", tmp_path / f"r.{ext}"
    run(capsys, cap, "--out", str(out), "--rollups", str(rollups))
    return out, rollups


def parse_cell(cell: str, tp: Any) -> Any:
    """A CSV cell back to a value of the annotation ``tp``."""
    args = typing.get_args(tp)
    if type(None) in args:
        return None if cell == "" else parse_cell(cell, next(a for a in args if a is not type(None)))
    if typing.get_origin(tp) is list:
        return cell.split(";") if cell else []
    if tp is bool:
        assert cell in ("true", "false")
        return cell == "true"
    return tp(cell)


@pytest.mark.parametrize("cap", CAPTURES, ids=lambda p: p.name)
def test_csv_records_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str], cap: Path):
    out, _ = outputs(tmp_path, capsys, cap, "csv")
    expected = jsonl(tmp_path / "c.jsonl")
    fields = record_fields()
    with out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == list(fields)
    assert len(rows) - 1 == len(expected) > 0
    for row, rec in zip(rows[1:], expected, strict=True):
        back = {name: parse_cell(cell, fields[name]) for name, cell in zip(rows[0], row, strict=True)}
        for name in fields:
            assert back[name] == rec[name], (name, back[name], rec[name])
            assert type(back[name]) is type(rec[name]), name


@pytest.mark.parametrize("cap", CAPTURES, ids=lambda p: p.name)
def test_csv_rollups_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str], cap: Path):
    _, rollups = outputs(tmp_path, capsys, cap, "csv")
    expected = [flatten(r) for r in jsonl(tmp_path / "r.jsonl")]
    with rollups.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(expected) > 0
    assert {"counts.post_syn", "shares.no_match", "total", "dimension"} <= set(rows[0])
    assert set(rows[0]) == {k for r in expected for k in r}
    for row, exp in zip(rows, expected, strict=True):
        for col, cell in row.items():
            if col not in exp:
                assert cell == ""  # a tag or signature this row does not have
                continue
            v = exp[col]
            assert type(v)(cell) == v, (col, cell, v)


@pytest.mark.parametrize("cap", CAPTURES, ids=lambda p: p.name)
def test_parquet_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str], cap: Path):
    out, rollups = outputs(tmp_path, capsys, cap, "parquet")
    table = pq.read_table(out)
    assert table.schema.equals(record_schema())
    assert table.schema.field("ttl_delta").nullable and not table.schema.field("stage").nullable
    expected = jsonl(tmp_path / "c.jsonl")
    back = table.to_pylist()
    assert len(back) == len(expected) > 0
    for b, e in zip(back, expected, strict=True):
        assert list(b) == list(e)
        for name in e:
            assert b[name] == e[name] and type(b[name]) is type(e[name]), name
    exp_rows = [flatten(r) for r in jsonl(tmp_path / "r.jsonl")]
    got_rows = pq.read_table(rollups).to_pylist()
    assert len(got_rows) == len(exp_rows) > 0
    for g, e in zip(got_rows, exp_rows, strict=True):
        assert {k: v for k, v in g.items() if v is not None} == e


def test_parquet_row_groups(tmp_path: Path):
    records = rstscope.analyze(DEMO).records
    with ParquetWriter(tmp_path / "c.parquet", record_schema(), row_group=10) as w:
        for r in records:
            w.write(r)
    f = pq.ParquetFile(tmp_path / "c.parquet")
    assert f.metadata.num_row_groups == -(-len(records) // 10)
    assert f.read().to_pylist() == records


def test_jsonl_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run(capsys, DEMO, "--out", str(tmp_path / "b.json"))
    run(capsys, DEMO, "--out", str(tmp_path / "c.jsonl"))
    run(capsys, DEMO, "--out", str(tmp_path / "d.txt"))
    assert jsonl(tmp_path / "b.json") == jsonl(tmp_path / "c.jsonl") == jsonl(tmp_path / "d.txt")


@pytest.mark.parametrize(("name", "fmt"), [
    ("c.jsonl", JSONL), ("c.json", JSONL), ("c", JSONL), ("c.txt", JSONL), ("c.csv.gz", JSONL),
    ("c.csv", CSV), ("C.CSV", CSV), ("dir.parquet/c.csv", CSV), ("c.parquet", PARQUET), ("c.Parquet", PARQUET),
])
def test_format_by_extension(name: str, fmt: str):
    assert format_of(name) == fmt


def test_extension_picks_the_writer(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = {ext: tmp_path / f"c.{ext}" for ext in ("json", "csv", "parquet")}
    for p in out.values():
        run(capsys, FIXTURE, "--out", str(p))
    assert json.loads(out["json"].read_text().splitlines()[0])["v"] == 2
    assert out["csv"].read_text(encoding="utf-8").startswith("v,id,window_start,")
    assert out["parquet"].read_bytes()[:4] == b"PAR1"


def test_missing_pyarrow(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    for flag in ("--out", "--rollups"):
        assert main(["analyze", str(FIXTURE), flag, str(tmp_path / "x.parquet"), "--format", "json"]) == 2
        cap = capsys.readouterr()
        assert cap.out == ""  # stopped before the run
        assert "pyarrow" in cap.err and "rstscope[parquet]" in cap.err
    # CSV and JSON lines do not need it.
    assert main(["analyze", str(FIXTURE), "--out", str(tmp_path / "x.csv"), "--format", "json"]) == 0


def test_missing_pandas(monkeypatch: pytest.MonkeyPatch):
    result = rstscope.analyze(FIXTURE)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingExtra, match=r"rstscope\[pandas\]"):
        result.to_pandas()


def test_api_equals_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    summary = run(capsys, DEMO, "--out", str(tmp_path / "c.jsonl"), "--rollups", str(tmp_path / "r.jsonl"))
    result = rstscope.analyze(DEMO)
    assert result.summary == summary
    assert result.records == jsonl(tmp_path / "c.jsonl")
    assert result.rollups == jsonl(tmp_path / "r.jsonl")
    df = result.to_pandas()
    assert list(df.columns) == list(record_fields())
    assert list(df["id"]) == [r["id"] for r in result.records]
    assert str(df["ttl_delta"].dtype) == "Int64"


def test_api_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    args = ["--server-port", "81", "--idle", "5"]
    assert rstscope.analyze([str(DEMO)], server_ports=[81], idle=5).summary == run(capsys, DEMO, *args)
    assert rstscope.analyze(DEMO, server_ports=[1]).summary["connections"] == 0
    with pytest.raises(FileNotFoundError):
        rstscope.analyze(tmp_path / "nothing.pcap")


def test_import_is_light():
    code = ("import sys, rstscope; "
            "print(sorted(m for m in sys.modules if m.startswith(('rstscope', 'numpy', 'pandas'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['rstscope', 'rstscope.pyapi']"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_docs_outputs_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    blocks = python_blocks((ROOT / "docs" / "outputs.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    (tmp_path / "examples").mkdir()
    shutil.copy(DEMO, tmp_path / "examples" / "demo.pcap")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "docs_outputs"}
    for block in blocks:
        exec(compile(block, "docs/outputs.md", "exec"), namespace)
    assert (tmp_path / "connections.parquet").is_file()
    assert "connections" in capsys.readouterr().out
