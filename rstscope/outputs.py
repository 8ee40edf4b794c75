"""Files of connection records and rollup rows: JSON lines, CSV or Parquet, chosen by the file's extension.

``.csv``: one header row; list fields (``tags``) joined with ``;``; nested dicts (the ``counts``,
``shares``, ``tags`` and ``signatures`` of rollup rows) flattened as ``counts.post_syn``; None as an
empty cell; booleans as ``true`` / ``false``. ``.parquet`` (needs pyarrow: ``pip install
'rstscope[parquet]'``): records with the column types of ``ConnectionRecord``'s annotations, in row
groups of ``ROW_GROUP`` rows. Anything else: JSON lines, one object per line.

Records are written as they come (JSON lines, CSV) or a row group at a time (Parquet), so memory stays
bounded. Rollup rows are few and already in memory: their CSV and Parquet columns are the union of
their flattened keys (a tag no row of the run has gets no column).
"""

from __future__ import annotations

import csv
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from rstscope.codecs.jsonl import write_line
from rstscope.core.record import ConnectionRecord

JSONL, CSV, PARQUET = "jsonl", "csv", "parquet"
FORMATS = (JSONL, CSV, PARQUET)
ROW_GROUP = 65_536
PARQUET_EXTRA = "parquet"
PANDAS_EXTRA = "pandas"


class MissingExtra(RuntimeError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def format_of(path: Path | str) -> str:
    """The output format of a file name: .csv -> csv, .parquet -> parquet, anything else -> jsonl."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return CSV
    if suffix == ".parquet":
        return PARQUET
    return JSONL


def record_fields() -> dict[str, Any]:
    """ConnectionRecord's fields and their types, in order: its annotations are the one list."""
    return typing.get_type_hints(ConnectionRecord)


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtra(f"Parquet output needs pyarrow: pip install 'rstscope[{PARQUET_EXTRA}]'") from None
    return pa, pq


def _arrow_type(pa: Any, tp: Any) -> tuple[Any, bool]:
    """(pyarrow type, nullable) of an annotation: int, float, str, bool, list[X], X | None."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"no Parquet column type for {tp!r}")
        return _arrow_type(pa, inner[0])[0], True
    if origin is list and len(args) == 1:
        return pa.list_(_arrow_type(pa, args[0])[0]), False
    scalars = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    for py, arrow in scalars.items():
        if tp is py:
            return arrow, False
    raise TypeError(f"no Parquet column type for {tp!r}")


def record_schema() -> Any:
    """The pyarrow schema of connection records, derived from ConnectionRecord's annotations."""
    pa, _ = _pyarrow()
    cols = []
    for name, tp in record_fields().items():
        arrow, nullable = _arrow_type(pa, tp)
        cols.append(pa.field(name, arrow, nullable=nullable))
    return pa.schema(cols)


def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys: {"counts": {"post_syn": 1}} -> {"counts.post_syn": 1}."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ";".join(str(v) for v in value)
    return str(value)


def _union_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


class Writer:
    """Writes rows (records or rollup rows) to one file; a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0

    def write(self, row: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonLinesWriter(Writer):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fh: IO[bytes] = path.open("wb")

    def write(self, row: Mapping[str, Any]) -> None:
        write_line(self.fh, row)
        self.rows += 1

    def close(self) -> None:
        self.fh.close()


class CsvWriter(Writer):
    """Fixed columns (records): a row as it comes. No columns given (rollups): rows kept, written at close."""

    def __init__(self, path: Path, columns: list[str] | None) -> None:
        super().__init__(path)
        self.fh: IO[str] = path.open("w", newline="", encoding="utf-8")
        self.out = csv.writer(self.fh)
        self.columns = columns
        self.pending: list[dict[str, Any]] = []
        if columns is not None:
            self.out.writerow(columns)

    def write(self, row: Mapping[str, Any]) -> None:
        flat = flatten(row)
        self.rows += 1
        if self.columns is None:
            self.pending.append(flat)
        else:
            self.out.writerow([csv_cell(flat.get(c)) for c in self.columns])

    def close(self) -> None:
        if self.fh.closed:
            return
        if self.columns is None:
            cols = _union_columns(self.pending)
            self.out.writerow(cols)
            for flat in self.pending:
                self.out.writerow([csv_cell(flat.get(c)) for c in cols])
            self.pending.clear()
        self.fh.close()


class ParquetWriter(Writer):
    """Schema given (records): a row group every ``row_group`` rows. None (rollups): inferred at close."""

    def __init__(self, path: Path, schema: Any | None, row_group: int = ROW_GROUP) -> None:
        super().__init__(path)
        self.pa, self.pq = _pyarrow()
        self.schema = schema
        self.row_group = row_group
        self.pending: list[dict[str, Any]] = []
        self.writer: Any = None
        self.closed = False
        if schema is not None:
            self.writer = self.pq.ParquetWriter(str(path), schema)

    def write(self, row: Mapping[str, Any]) -> None:
        self.pending.append(dict(row) if self.schema is not None else flatten(row))
        self.rows += 1
        if self.schema is not None and len(self.pending) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(self.pa.Table.from_pylist(self.pending, schema=self.schema))
            self.pending = []

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.schema is None:
            cols = _union_columns(self.pending)
            table = self.pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in self.pending])
            self.pq.write_table(table, str(self.path), row_group_size=self.row_group)
            self.pending = []
            return
        self._flush()
        self.writer.close()


def record_writer(path: Path | str) -> Writer:
    """A writer of connection records, in the format of the file's extension."""
    p = Path(path)
    fmt = format_of(p)
    if fmt == CSV:
        return CsvWriter(p, list(record_fields()))
    if fmt == PARQUET:
        return ParquetWriter(p, record_schema())
    return JsonLinesWriter(p)


def rollup_writer(path: Path | str) -> Writer:
    """A writer of rollup rows, in the format of the file's extension."""
    p = Path(path)
    fmt = format_of(p)
    if fmt == CSV:
        return CsvWriter(p, None)
    if fmt == PARQUET:
        return ParquetWriter(p, None)
    return JsonLinesWriter(p)
