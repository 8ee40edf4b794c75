"""The rollup store: an embedded DuckDB file (or memory) holding the latest rollup row per
(bucket_start, dimension, key, transport), plus optionally classified connections for `--expose-connections`.

Rollup rows are upserts of the latest counts (the rollups topic is compacted), so `upsert` replaces by
key and loading the same file or replaying the topic twice changes nothing. Aggregation is always from
counts: shares are computed by the API after summing, never averaged.

Alerts (rstscope.insights.model.Alert) are upserts too: the latest version of an alert id replaces the
earlier one (it grew, or closed), whether it came from the alerts topic or a `rstscope alerts` file.

Country and ASN rows may carry a display `name` (docs/wire-formats.md); it is stored with its row, and
`names()` answers the most recent non-empty one per key (the newest bucket's), so a producer that lost
a name for a while (or an older one that never had names) does not erase it.

Rows are per transport (core/rollup.py): every read names one, so TCP and QUIC counts never mix. A
store created before transports is rebuilt with the column (its rows are TCP) when first opened for
writing, as `serve --db` and `sink` do: the primary key changes, which DuckDB cannot alter in place.

DuckDB lets one process write a file, and no other process open it meanwhile. So a store that shares
its file with another process (`hold=False`: the sink writing, `serve` reading) opens the file per
operation and retries briefly while the other side holds the lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson

from rstscope.api.query import Filters
from rstscope.codecs.errors import MalformedRecord
from rstscope.codecs.jsonl import read_lines
from rstscope.core.classify import STAGES
from rstscope.core.rollup import BUCKET_S, DIMENSIONS, TCP, TRANSPORTS, Cell, RowKey, transport_of
from rstscope.insights.alerts import TRANSPORT as ALERT_TRANSPORT
from rstscope.insights.model import Alert, alert_from_wire

_ROLLUPS = f"""
CREATE TABLE IF NOT EXISTS rollups (
  bucket_start BIGINT NOT NULL,
  dimension VARCHAR NOT NULL,
  key VARCHAR NOT NULL,
  bucket_s INTEGER NOT NULL,
  total BIGINT NOT NULL,
  {", ".join(f"{s} BIGINT NOT NULL" for s in STAGES)},
  tags VARCHAR NOT NULL,
  signatures VARCHAR NOT NULL,
  post_syn_geo_unreliable BIGINT NOT NULL,
  updated_at DOUBLE NOT NULL,
  name VARCHAR DEFAULT '',
  transport VARCHAR NOT NULL DEFAULT '{TCP}',
  PRIMARY KEY (bucket_start, dimension, key, transport)
);
"""
_SCHEMA = f"""{_ROLLUPS}
-- Added after the first release: stores created before it get the column here.
ALTER TABLE rollups ADD COLUMN IF NOT EXISTS name VARCHAR DEFAULT '';
CREATE TABLE IF NOT EXISTS alerts (
  id VARCHAR PRIMARY KEY,
  dimension VARCHAR NOT NULL,
  key VARCHAR NOT NULL,
  stage VARCHAR NOT NULL,
  state VARCHAR NOT NULL,
  start_s BIGINT NOT NULL,
  end_s BIGINT,
  record VARCHAR NOT NULL,
  updated_at DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS connections (
  id VARCHAR PRIMARY KEY,
  asn BIGINT NOT NULL,
  country VARCHAR NOT NULL,
  last_ts DOUBLE NOT NULL,
  record VARCHAR NOT NULL
);
"""
_COLS = ("bucket_start", "dimension", "key", "bucket_s", "total", *STAGES, "tags", "signatures",
         "post_syn_geo_unreliable", "updated_at", "name", "transport")

# numpy dtype of each column of a batch: DuckDB scans a dict of numpy arrays directly (no pandas).
_DTYPES = tuple(np.float64 if c == "updated_at" else
                object if c in ("dimension", "key", "tags", "signatures", "name", "transport") else np.int64
                for c in _COLS)
_MAX_COUNT = 2**63 - 1
MAX_NAME = 256  # longer names (a database's odd entry) are cut, not refused: they are only labels


class BadRow(ValueError):
    """A rollup row that does not follow docs/wire-formats.md (v1)."""


def _count(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_COUNT:
        raise BadRow(f"{what}: {v!r} is not a count")
    return v


def _count_map(v: Any, what: str) -> dict[str, int]:
    if not isinstance(v, dict):
        raise BadRow(f"{what} is not an object")
    return {str(k): _count(n, f"{what}.{k}") for k, n in v.items()}


class StoreError(RuntimeError):
    """A store file this version cannot read as it is."""


def _columns(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The columns of the rollups table (none when there is no table yet)."""
    return {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_schema = 'main' AND table_name = 'rollups'").fetchall()}


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Rebuild a rollups table from before transports with the column (its rows are TCP) and the
    primary key that includes it; nothing to do on a current one."""
    if "transport" in _columns(con):
        return
    old = [c for c in _COLS if c != "transport"]
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("ALTER TABLE rollups RENAME TO rollups_before_transport")
        con.execute(_ROLLUPS)
        con.execute(f"INSERT INTO rollups ({', '.join(old)}) SELECT {', '.join(old)} FROM rollups_before_transport")
        con.execute("DROP TABLE rollups_before_transport")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def row_identity(t: tuple[Any, ...]) -> RowKey:
    """The key of a table tuple from ``normalize_row`` (the row's upsert identity)."""
    return t[0], t[1], t[2], t[-1]


def normalize_row(row: Mapping[str, Any], now: float | None = None) -> tuple[Any, ...]:
    """A wire-format rollup row as a table tuple; the total is recomputed from the stage counts."""
    if row.get("v") != 1:
        raise BadRow(f"unsupported rollup row version {row.get('v')!r}")
    transport = transport_of(row)
    if transport not in TRANSPORTS:
        raise BadRow(f"unknown transport {row.get('transport')!r}")
    dim = row.get("dimension")
    if dim not in DIMENSIONS:
        raise BadRow(f"unknown dimension {dim!r}")
    key = row.get("key")
    if not isinstance(key, str) or (dim == "world") != (key == ""):
        raise BadRow(f"bad key {key!r} for dimension {dim}")
    bucket = _count(row.get("bucket_start"), "bucket_start")
    bucket_s = _count(row.get("bucket_s", BUCKET_S), "bucket_s")
    if bucket_s != BUCKET_S or bucket % bucket_s:
        raise BadRow(f"bucket {bucket}/{bucket_s} is not a {BUCKET_S}-second bucket")
    counts = _count_map(row.get("counts"), "counts")
    stages = [counts.get(s, 0) for s in STAGES]
    tags = _count_map(row.get("tags", {}), "tags")
    sigs = _count_map(row.get("signatures", {}), "signatures")
    unreliable = _count(row.get("post_syn_geo_unreliable", counts.get("post_syn", 0)), "post_syn_geo_unreliable")
    name = row.get("name", "")
    if not isinstance(name, str):
        raise BadRow(f"name: {name!r} is not a string")
    name = name.strip()[:MAX_NAME] if dim in ("country", "asn") else ""
    return (bucket, dim, key, bucket_s, sum(stages), *stages, orjson.dumps(tags).decode(),
            orjson.dumps(sigs).decode(), unreliable, time.time() if now is None else now, name, transport)


def json_lines(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``codecs.jsonl.read_lines``, its errors as the store's BadRow."""
    try:
        yield from read_lines(path)
    except MalformedRecord as e:
        raise BadRow(str(e)) from e


class Store:
    """Rollup rows (and connections) in DuckDB. Thread-safe: one lock around the connection."""

    def __init__(self, path: Path | str | None = None, *, read_only: bool = False, hold: bool = True,
                 lock_timeout: float = 10.0) -> None:
        self.path = str(path) if path is not None else ":memory:"
        self.read_only = read_only
        self.hold = hold or self.path == ":memory:"
        self.lock_timeout = lock_timeout
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        if not read_only:
            with self._connect() as con:
                con.execute(_SCHEMA)
                _migrate(con)
            return
        with self._connect() as con:
            cols = _columns(con)
        if cols and "transport" not in cols:  # it cannot be migrated read-only
            self.close()
            raise StoreError(f"{self.path}: a store from before transports; open it once for writing "
                                 "(rstscope serve --db FILE, or rstscope sink) to migrate it")

    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                return duckdb.connect(self.path, read_only=self.read_only)
            except duckdb.IOException:
                # Another process holds the file's lock (e.g. the sink between commits): wait a little.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            if self.hold:
                if self._con is None:
                    self._con = self._open()
                yield self._con
                return
            con = self._open()
            try:
                yield con
            finally:
                con.close()

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # ---- writes

    def upsert(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Replace rows by (bucket_start, dimension, key, transport); the last of duplicates in one batch wins."""
        latest: dict[RowKey, tuple[Any, ...]] = {}
        now = time.time()
        for row in rows:
            t = normalize_row(row, now)
            latest[row_identity(t)] = t
        if not latest:
            return 0
        columns = zip(*latest.values(), strict=True)
        # One statement over a dict of numpy arrays: ~1 µs a row, where multi-row VALUES cost ~200 µs and
        # executemany ~2 ms (a year of rollups is hundreds of thousands of rows).
        batch = {c: np.asarray(v, dtype=dt) for c, v, dt in zip(_COLS, columns, _DTYPES, strict=True)}
        with self._connect() as con:
            con.register("rollup_batch", batch)
            try:
                con.execute(f"INSERT OR REPLACE INTO rollups ({', '.join(_COLS)}) "
                            f"SELECT {', '.join(_COLS)} FROM rollup_batch")
            finally:
                con.unregister("rollup_batch")
        return len(latest)

    def delete(self, keys: Iterable[RowKey]) -> int:
        """Tombstones of the compacted topic remove a row."""
        keys = list(keys)
        with self._connect() as con:
            for k in keys:
                con.execute("DELETE FROM rollups WHERE bucket_start = ? AND dimension = ? AND key = ? "
                            "AND transport = ?", list(k))
        return len(keys)

    def load_rollups(self, path: Path | str) -> int:
        """Load a `rstscope analyze --rollups` file (JSON lines). Bad rows raise with their line number."""
        rows = []
        for n, obj in json_lines(path):
            try:
                normalize_row(obj)
            except BadRow as e:
                raise BadRow(f"{path}: line {n}: {e}") from e
            rows.append(obj)
        return self.upsert(rows)

    def load_connections(self, path: Path | str) -> int:
        """Load a `rstscope analyze --out` file; records are keyed (and de-duplicated) by their `id`."""
        recs: dict[str, tuple[Any, ...]] = {}
        for n, r in json_lines(path):
            try:
                recs[str(r["id"])] = (str(r["id"]), int(r.get("asn") or 0), str(r.get("country") or "XX"),
                                      float(r.get("last_ts") or 0.0), orjson.dumps(r).decode())
            except (KeyError, TypeError, ValueError) as e:
                raise BadRow(f"{path}: line {n}: not a connection record ({e})") from e
        if recs:
            with self._connect() as con:
                con.executemany("INSERT OR REPLACE INTO connections VALUES (?, ?, ?, ?, ?)", list(recs.values()))
        return len(recs)

    def upsert_alerts(self, alerts: Iterable[Alert]) -> int:
        """Store alerts by id: a later version of an id replaces the earlier (the last in one batch wins)."""
        latest: dict[str, tuple[Any, ...]] = {}
        now = time.time()
        for a in alerts:
            latest[a.id] = (a.id, a.dimension, a.key, a.stage, a.state, a.start, a.end,
                            orjson.dumps(a.to_wire()).decode(), now)
        if latest:
            with self._connect() as con:
                con.executemany("INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                list(latest.values()))
        return len(latest)

    def delete_alerts(self, ids: Iterable[str]) -> int:
        """Tombstones of the compacted alerts topic remove an alert."""
        ids = list(ids)
        with self._connect() as con:
            for i in ids:
                con.execute("DELETE FROM alerts WHERE id = ?", [i])
        return len(ids)

    def load_alerts(self, path: Path | str) -> int:
        """Load a `rstscope alerts --out` file (wire alerts, JSON lines). Bad lines raise with their number."""
        alerts = []
        for n, obj in json_lines(path):
            try:
                alerts.append(alert_from_wire(obj))
            except ValueError as e:
                raise BadRow(f"{path}: line {n}: not an alert ({e})") from e
        return self.upsert_alerts(alerts)

    # ---- reads

    def alerts(self, start_s: int, end_s: int, filters: Filters | None = None, *, exact: bool = False,
               stage: str | None = None, state: str | None = None, limit: int | None = None) -> list[Alert]:
        """Alerts overlapping [start_s, end_s) (an open alert overlaps everything after its start), newest
        first. `filters`: the networks they cover (`Filters.covers`), or with `exact` only the network they
        aggregate (`Filters.selects`: the alerts that annotate a series). Alerts are of TCP rows only
        (docs/insights.md): filters of another transport select none."""
        if filters is not None and filters.transport != ALERT_TRANSPORT:
            return []
        sql = "SELECT dimension, key, record FROM alerts WHERE start_s < ? AND (end_s IS NULL OR end_s > ?)"
        params: list[Any] = [end_s, start_s]
        for column, value in (("stage", stage), ("state", state), ("dimension", filters.dimension if exact and
                                                                    filters is not None else None)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        out: list[Alert] = []
        for dim, key, record in self._rows(sql + " ORDER BY start_s DESC, id", params):
            if filters is not None and not (filters.selects(dim, key) if exact else filters.covers(dim, key)):
                continue
            out.append(alert_from_wire(orjson.loads(record)))
            if limit is not None and len(out) >= limit:
                break
        return out

    def alert_count(self) -> int:
        return int(self._rows("SELECT count(*) FROM alerts", [])[0][0])

    def _rows(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._connect() as con:
            return con.execute(sql, params).fetchall()

    def _bucket_aggs(self, dimension: str, transport: str, start_s: int, end_s: int, keys: Iterable[str] | None,
                     accept: Filters | None, breakdowns: bool) -> dict[int, Cell]:
        sql = (f"SELECT bucket_start, key, {', '.join(STAGES)}, tags, signatures, post_syn_geo_unreliable "
               "FROM rollups WHERE dimension = ? AND transport = ? AND bucket_start >= ? AND bucket_start < ?")
        params: list[Any] = [dimension, transport, start_s, end_s]
        if keys is not None:
            keys = sorted(keys)
            if not keys:
                return {}
            sql += f" AND key IN ({', '.join('?' for _ in keys)})"
            params += keys
        out: dict[int, Cell] = {}
        n = len(STAGES)
        for row in self._rows(sql, params):
            if accept is not None and not accept.accepts(row[1]):
                continue
            agg = out.get(row[0])
            if agg is None:
                agg = out[row[0]] = Cell()
            for i, s in enumerate(STAGES):
                agg.counts[s] += row[2 + i]
            if breakdowns:  # JSON decoding dominates the cost: only when tags/signatures are asked for
                agg.tags.update(orjson.loads(row[2 + n]))
                agg.signatures.update(orjson.loads(row[3 + n]))
            agg.post_syn_geo_unreliable += row[4 + n]
        return out

    def per_bucket(self, filters: Filters, start_s: int, end_s: int, *, breakdowns: bool = False) -> dict[int, Cell]:
        """Summed counts per 15-minute bucket in [start_s, end_s) for the rows `filters` selects (of its
        transport).

        Exclusion only (`location=-DE`, `continent=-EU`, `asn=-174`): the world row minus the excluded rows,
        per bucket, from counts. Continents select the rows of their countries.
        """
        dim, t = filters.dimension, filters.transport
        if dim == "world":
            return self._bucket_aggs("world", t, start_s, end_s, None, None, breakdowns)
        if dim == "country":
            include, exclude = filters.country_sets()
            if include is not None:
                return self._bucket_aggs(dim, t, start_s, end_s, include, None, breakdowns)
            return self._world_minus(dim, t, exclude, start_s, end_s, breakdowns)
        if dim == "asn":
            if filters.asn.include:
                return self._bucket_aggs(dim, t, start_s, end_s, filters.asn.include, None, breakdowns)
            return self._world_minus(dim, t, filters.asn.exclude, start_s, end_s, breakdowns)
        return self._bucket_aggs(dim, t, start_s, end_s, None, filters, breakdowns)

    def _world_minus(self, dim: str, transport: str, exclude: Iterable[str], start_s: int, end_s: int,
                     breakdowns: bool) -> dict[int, Cell]:
        world = self._bucket_aggs("world", transport, start_s, end_s, None, None, breakdowns)
        for b, agg in self._bucket_aggs(dim, transport, start_s, end_s, exclude, None, breakdowns).items():
            if b in world:
                world[b].merge(agg, -1)
        clamped = {b: a.clamp() for b, a in world.items()}
        return {b: a for b, a in clamped.items() if a.total > 0}

    def key_totals(self, dimension: str, start_s: int, end_s: int, transport: str = TCP) -> dict[str, Cell]:
        """Summed counts per key of a dimension over a range, of one transport (top lists, selectors, outliers)."""
        sql = (f"SELECT key, {', '.join(f'sum({s})' for s in STAGES)} FROM rollups "
               "WHERE dimension = ? AND transport = ? AND bucket_start >= ? AND bucket_start < ? GROUP BY key")
        out: dict[str, Cell] = {}
        for row in self._rows(sql, [dimension, transport, start_s, end_s]):
            agg = out[row[0]] = Cell()
            for i, s in enumerate(STAGES):
                agg.counts[s] = int(row[1 + i])
        return out

    def names(self, dimension: str) -> dict[str, str]:
        """Key -> the most recent non-empty name of a dimension's rows (country or asn), whole store: a name
        is the network's, whatever the transport of the row that brought it."""
        rows = self._rows("SELECT key, arg_max(name, bucket_start) FROM rollups WHERE dimension = ? AND name <> '' "
                          "GROUP BY key", [dimension])
        return {str(k): str(n) for k, n in rows}

    def span(self, transport: str = TCP) -> tuple[int, int] | None:
        """First bucket start and last bucket end of a transport's world rows: its data's own time span."""
        row = self._rows("SELECT min(bucket_start), max(bucket_start + bucket_s), count(*) FROM rollups "
                         "WHERE dimension = 'world' AND transport = ?", [transport])[0]
        return None if not row[2] else (int(row[0]), int(row[1]))

    def row_count(self, transport: str | None = None) -> int:
        """Rows of one transport, or of all."""
        if transport is None:
            return int(self._rows("SELECT count(*) FROM rollups", [])[0][0])
        return int(self._rows("SELECT count(*) FROM rollups WHERE transport = ?", [transport])[0][0])

    def transports(self) -> list[str]:
        """The transports that have rows, in ``TRANSPORTS`` order."""
        have = {str(r[0]) for r in self._rows("SELECT DISTINCT transport FROM rollups", [])}
        return [t for t in TRANSPORTS if t in have]

    def get(self, key: RowKey) -> dict[str, Any] | None:
        """One stored row back in wire format (for tests and debugging)."""
        rows = self._rows(f"SELECT {', '.join(_COLS)} FROM rollups WHERE bucket_start = ? AND dimension = ? "
                          "AND key = ? AND transport = ?", list(key))
        if not rows:
            return None
        r = dict(zip(_COLS, rows[0], strict=True))
        out = {"v": 1, "bucket_start": r["bucket_start"], "bucket_s": r["bucket_s"], "dimension": r["dimension"],
               "key": r["key"], "transport": r["transport"], "total": r["total"], "counts": {s: r[s] for s in STAGES},
               "tags": orjson.loads(r["tags"]), "signatures": orjson.loads(r["signatures"]),
               "post_syn_geo_unreliable": r["post_syn_geo_unreliable"]}
        if r["name"]:
            out["name"] = r["name"]
        return out

    def recent_connections(self, asn: int, limit: int) -> list[dict[str, Any]]:
        rows = self._rows("SELECT record FROM connections WHERE asn = ? ORDER BY last_ts DESC, id LIMIT ?",
                          [asn, limit])
        return [orjson.loads(r[0]) for r in rows]
