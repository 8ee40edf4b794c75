"""Connection records and rollup rows as JSON (orjson): one object per line in files, per message on topics."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from rstscope.codecs.errors import MalformedRecord


def dumps(obj: Mapping[str, Any]) -> bytes:
    return orjson.dumps(obj)


def _parse(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise MalformedRecord(f"not JSON: {e}") from e


def loads(data: bytes | str) -> dict[str, Any]:
    obj = _parse(data)
    if not isinstance(obj, dict):
        raise MalformedRecord("not a JSON object")
    return obj


def loads_array(data: bytes | str) -> list[Any]:
    """A JSON array (a batch of records); its items are checked by whoever reads them."""
    obj = _parse(data)
    if not isinstance(obj, list):
        raise MalformedRecord("not a JSON array")
    return obj


def write_line(fh: IO[bytes], obj: Mapping[str, Any]) -> None:
    fh.write(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))


def read_lines(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSON-lines file with their line numbers (blank lines skipped), so that a
    reader can name the line of an object it refuses; a line that is not a JSON object raises
    MalformedRecord naming its line."""
    with Path(path).open("rb") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, loads(line)
                except MalformedRecord as e:
                    raise MalformedRecord(f"{path}: line {n}: {e}") from e
