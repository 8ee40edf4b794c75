"""Rollups: per 15-minute bucket and per dimension, connection counts per stage and their shares.

Dimensions: world, country, asn, country_asn. Shares are percent of all classified connections in
the bucket (no_match included): the numbers a Radar summary shows. Rows merge by addition, so the
same counts come out whether they are built in one pass (analyze) or incrementally (rollup agent).

Country and ASN rows also carry a display ``name`` (additive to wire format v1): the country's from the
package's table (rstscope/names.py), the AS's from its connection records' ``as_name``. A row's AS name
depends only on that row's records, so rows come out the same however the records are partitioned.

Rows are per transport (``TRANSPORTS``): a TCP and a QUIC connection of the same bucket and network
count in two rows, because the stages mean different things (docs/quic.md) and a share over both would
mean neither. ``transport_of`` is the one place that says which transport a record or row is; the
transport is part of a row's identity (``RowKey``) and, for other transports than TCP, of its Kafka key
(TCP keys keep the text they had before transports, so existing consumers see nothing change).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rstscope.config import WINDOW_S
from rstscope.core.classify import NO_MATCH, POST_SYN, STAGES
from rstscope.names import country_name

DIMENSIONS = ("world", "country", "asn", "country_asn")
BUCKET_S = WINDOW_S  # the bucket of rollup rows (wire format v1; the API accepts only this one)
ROLLUP_VERSION = 1
TRANSPORTS = ("tcp", "quic")
TCP = TRANSPORTS[0]  # the transport of records and rows that name none (they predate transports)
RowKey = tuple[int, str, str, str]  # (bucket_start, dimension, value, transport)


def _counter() -> Counter[str]:
    """An empty Counter without ``Counter.__init__`` (which only calls ``update``: ~0.3 µs for nothing).
    A rollup makes three per row it creates: a busy bucket, or a rebuild, creates rows by the hundred thousand."""
    return Counter.__new__(Counter)


def transport_of(record: Mapping[str, Any]) -> str:
    """The transport of a connection record or rollup row: its ``transport`` field, TCP when absent
    (TCP records and rows written before QUIC carry none)."""
    return str(record.get("transport") or TCP)


def dimension_keys(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (dimension, value) pairs a connection record counts towards."""
    cc = str(record.get("country") or "XX")
    asn = str(int(record.get("asn") or 0))
    return [("world", ""), ("country", cc), ("asn", asn), ("country_asn", f"{cc}:{asn}")]


@dataclass(slots=True)
class Cell:
    """Counts of one (bucket, dimension, value), or the sum of several: the only thing shares come from.

    Field names are the wire format's (docs/wire-formats.md): ``counts`` per stage, ``tags``,
    ``signatures``, ``post_syn_geo_unreliable``.
    """

    counts: Counter[str] = field(default_factory=_counter)
    tags: Counter[str] = field(default_factory=_counter)
    signatures: Counter[str] = field(default_factory=_counter)
    post_syn_geo_unreliable: int = 0

    @property
    def total(self) -> int:
        """All classified connections (no_match included)."""
        return sum(self.counts[s] for s in STAGES)

    @property
    def anomalous(self) -> int:
        """Connections in a stage other than no_match."""
        return self.total - self.counts[NO_MATCH]

    def add(self, record: Mapping[str, Any], n: int = 1) -> None:
        """Count one connection record (or ``n`` identical ones)."""
        self.counts[record["stage"]] += n
        for t in record.get("tags") or ():
            self.tags[t] += n
        sig = record.get("signature")
        if sig:
            self.signatures[sig] += n
        if record["stage"] == POST_SYN:
            self.post_syn_geo_unreliable += n

    def merge(self, other: Cell, sign: int = 1) -> None:
        """Add (``sign=1``) or subtract (``sign=-1``) another cell's counts."""
        for s in STAGES:
            self.counts[s] += sign * other.counts[s]
        for k, v in other.tags.items():
            self.tags[k] += sign * v
        for k, v in other.signatures.items():
            self.signatures[k] += sign * v
        self.post_syn_geo_unreliable += sign * other.post_syn_geo_unreliable

    def clamp(self) -> Cell:
        """Drop non-positive entries left by subtraction (an excluded key absent from a world row's bucket)."""
        for s in STAGES:
            self.counts[s] = max(0, self.counts[s])
        for c in (self.tags, self.signatures):
            for k in [k for k, v in c.items() if v <= 0]:
                del c[k]
        self.post_syn_geo_unreliable = max(0, self.post_syn_geo_unreliable)
        return self


def bucket_of(record: Mapping[str, Any], bucket_s: int) -> int:
    """The start of the rollup bucket a connection record counts in."""
    return int(record["window_start"]) // bucket_s * bucket_s


def _named_at(record: Mapping[str, Any]) -> float:
    """When a record names its asn row: its last packet (its window, without one); the latest name wins."""
    return float(record.get("last_ts") or record["window_start"])


def row_keys(record: Mapping[str, Any], bucket_s: int) -> list[RowKey]:
    """The rows a connection record counts in: its bucket, each of its dimensions, its transport."""
    bucket = bucket_of(record, bucket_s)
    transport = transport_of(record)
    return [(bucket, dim, value, transport) for dim, value in dimension_keys(record)]


def row_key_of(row: Mapping[str, Any]) -> RowKey:
    """The identity of a rollup row (wire format): what an upsert replaces."""
    return int(row["bucket_start"]), str(row["dimension"]), str(row["key"]), transport_of(row)


def share(count: int, total: int, ndigits: int = 6) -> float:
    """``count`` as a percentage of ``total``, rounded to ``ndigits`` decimals (0.0 when there is nothing)."""
    return round(100.0 * count / total, ndigits) if total > 0 else 0.0


def shares(stages: Mapping[str, int], ndigits: int = 6) -> dict[str, float]:
    """Each stage's share of all classified connections (no_match included)."""
    total = sum(stages.get(s, 0) for s in STAGES)
    return {s: share(stages.get(s, 0), total, ndigits) for s in STAGES}


class Rollup:
    """Accumulates connection records into rows keyed by (bucket_start, dimension, value, transport)."""

    def __init__(self, bucket_s: int = BUCKET_S) -> None:
        self.bucket_s = bucket_s
        self.cells: dict[RowKey, Cell] = {}
        # asn row -> (last_ts, as_name) of its most recent record with a name (the name wins ties, so
        # the result does not depend on the order records arrive in).
        self.as_names: dict[RowKey, tuple[float, str]] = {}

    def add(self, record: Mapping[str, Any], n: int = 1) -> list[RowKey]:
        """Count one record (or ``n`` identical ones); returns the row keys it changed."""
        keys = row_keys(record, self.bucket_s)
        for k in keys:
            cell = self.cells.get(k)
            if cell is None:
                cell = self.cells[k] = Cell()
            cell.add(record, n)
            if k[1] == "asn":
                self._note_as_name(k, record)
        return keys

    def add_many(self, records: Iterable[Mapping[str, Any]]) -> set[RowKey]:
        """Count many records; returns the row keys they changed. The same counts as ``add`` per
        record, in one ``add`` per group of records the rollup cannot tell apart (a rollup-input
        message of 500 connections holds a few dozen such groups): of each group, the record with the
        latest time names an asn row, as ``add`` would have it."""
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for r in records:
            g = (bucket_of(r, self.bucket_s), r.get("country"), r.get("asn"), r["stage"],
                 tuple(r.get("tags") or ()), r.get("signature"), r.get("as_name"), r.get("transport"))
            rank = _named_at(r)
            e = groups.get(g)
            if e is None:
                groups[g] = [1, rank, r]
            else:
                e[0] += 1
                if rank > e[1]:
                    e[1], e[2] = rank, r
        changed: set[RowKey] = set()
        for n, _rank, r in groups.values():
            changed.update(self.add(r, n))
        return changed

    def _note_as_name(self, key: RowKey, record: Mapping[str, Any]) -> None:
        name = record.get("as_name")
        if not name or not isinstance(name, str):
            return
        rank = (_named_at(record), name)
        old = self.as_names.get(key)
        if old is None or rank > old:
            self.as_names[key] = rank

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        for r in records:
            self.add(r)

    def row(self, key: RowKey) -> dict[str, Any]:
        named = self.as_names.get(key)
        return row_dict(key, self.cells[key], self.bucket_s, named[1] if named else "")

    def rows(self) -> Iterator[dict[str, Any]]:
        for k in sorted(self.cells):
            yield self.row(k)


def row_key_text(key: RowKey) -> str:
    """The Kafka key of a rollup row, its upsert identity: ``bucket|dimension|value`` for TCP (the text
    it had before transports), ``bucket|dimension|value|transport`` for another transport."""
    bucket, dim, value, transport = key
    text = f"{bucket}|{dim}|{value}"
    return text if transport == TCP else f"{text}|{transport}"


def parse_row_key(text: str) -> RowKey:
    """The inverse of ``row_key_text`` (only its own spellings: one text per row); ValueError otherwise."""
    parts = text.split("|")
    if len(parts) == 3:
        parts.append(TCP)
    elif len(parts) != 4 or parts[3] == TCP or parts[3] not in TRANSPORTS:
        raise ValueError(f"not a rollup row key: {text!r}")
    return int(parts[0]), parts[1], parts[2], parts[3]


def row_dict(key: RowKey, cell: Cell, bucket_s: int, as_name: str = "") -> dict[str, Any]:
    """A rollup row in wire format (docs/wire-formats.md); ``name`` only on country and asn rows that have one."""
    bucket, dim, value, transport = key
    stages = {s: cell.counts.get(s, 0) for s in STAGES}
    row = {
        "v": ROLLUP_VERSION,
        "bucket_start": bucket,
        "bucket_s": bucket_s,
        "dimension": dim,
        "key": value,
        "transport": transport,
        "total": sum(stages.values()),
        "counts": stages,
        "shares": shares(stages),
        "tags": dict(sorted(cell.tags.items())),
        "signatures": dict(sorted(cell.signatures.items())),
        "post_syn_geo_unreliable": cell.post_syn_geo_unreliable,
    }
    name = country_name(value) if dim == "country" else as_name if dim == "asn" else ""
    if name:
        row["name"] = name
    return row
