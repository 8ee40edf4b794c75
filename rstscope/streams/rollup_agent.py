"""The rollup stage: rollup input (records keyed by bucket) -> Rollup -> upserts on the rollups topic.

A rollup row (bucket, dimension, value) sums connections from every packets partition, so one owner
per row is needed: the connection agent sends each record twice, to the public connections topic
(keyed by id) and, in batches (a JSON array per message), to the internal ``<app id>-rollup-input``
topic keyed by its 15-minute bucket, so every bucket lives on exactly one partition there. (A separate
agent re-keying the connections topic cost a consume and a send per record, and one more set of
offsets to keep in order.)

State is one Faust table, ``rollup-records`` (changelog ``<app id>-rollup-records-changelog``,
compacted, co-partitioned with the rollup input): connection id -> the few fields the rollup reads.
It is the de-duplication set *and* the source of the counts in one write per record, so a replay can
neither double count nor lose a count: a record already in the table is not counted again. The
per-partition Rollup objects are a cache of the table, rebuilt from it after every rebalance or
restart (Faust restores the table from its changelog before streams resume). The upserts of a
duplicate are re-sent: that covers a crash after the table write but before the upsert went out.

Upserts are coalesced: changed rows are sent at most every ``FLUSH_S`` (or ``FLUSH_EVENTS`` records),
each once with its current value, and the input messages are acked (manually, in order) only after
the rows that include them were sent. A busy row thus costs one message per flush, not per record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from rstscope.codecs.errors import CodecError, MalformedRecord
from rstscope.codecs.jsonl import dumps, loads_array
from rstscope.core.rollup import Rollup, RowKey, dimension_keys, row_key_text
from rstscope.streams.offsets import OffsetGuard, periodic

FLUSH_S = 0.2
FLUSH_EVENTS = 2000
_FIELDS = ("window_start", "country", "asn", "stage", "tags", "signature")


def compact(record: dict[str, Any], partition: int) -> bytes:
    """What the table keeps per connection: the rollup's inputs and the owning partition."""
    d = {k: record.get(k) for k in _FIELDS}
    d["p"] = partition
    return orjson.dumps(d)


def bucket_of(record: Mapping[str, Any], bucket_s: int) -> int:
    return int(record["window_start"]) // bucket_s * bucket_s


class RollupStage:
    """Transport-free rollup logic over a mapping ``records`` (a Faust table in the worker)."""

    def __init__(self, bucket_s: int) -> None:
        self.bucket_s = bucket_s
        self.rollups: dict[int, Rollup] = {}
        self.dirty: dict[int, set[RowKey]] = {}
        self.counters: Counter[str] = Counter()

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.rollups.pop(p, None)
            self.dirty.pop(p, None)

    def rollup(self, partition: int, records: Any) -> Rollup:
        r = self.rollups.get(partition)
        if r is None:
            r = self.rollups[partition] = Rollup(self.bucket_s)
            for value in records.values():
                d = orjson.loads(value)
                if d.get("p") == partition:
                    r.add(d)
            self.counters["rebuilds"] += 1
        return r

    def add_batch(self, partition: int, value: bytes, records: Any) -> int:
        """Count a rollup-input message: a JSON array of connection records. Returns how many."""
        recs = loads_array(value)
        for rec in recs:
            self.add_record(partition, rec, records)
        return len(recs)

    def add_record(self, partition: int, rec: Any, records: Any) -> list[RowKey]:
        """Count one connection record (once per id); returns (and marks dirty) the rows it touches."""
        if not isinstance(rec, dict):
            raise MalformedRecord("connection record is not a JSON object")
        rid = rec.get("id")
        if not isinstance(rid, str) or "window_start" not in rec or "stage" not in rec:
            raise MalformedRecord("connection record without id, window_start or stage")
        r = self.rollup(partition, records)
        keys: list[RowKey]
        if rid in records:
            self.counters["duplicates"] += 1
            b = bucket_of(rec, self.bucket_s)
            keys = [(b, d, v) for d, v in dimension_keys(rec)]
        else:
            records[rid] = compact(rec, partition)
            keys = r.add(rec)
            self.counters["counted"] += 1
        self.dirty.setdefault(partition, set()).update(keys)
        return keys

    def take_dirty(self) -> list[tuple[str, dict[str, Any]]]:
        """The current value of every row changed since the last call (upserts to send)."""
        out: list[tuple[str, dict[str, Any]]] = []
        dirty, self.dirty = self.dirty, {}
        for p, keys in dirty.items():
            r = self.rollups.get(p)
            if r is not None:
                out.extend((row_key_text(k), r.row(k)) for k in sorted(keys))
        self.counters["upserts"] += len(out)
        return out

    def rows(self) -> Iterator[dict[str, Any]]:
        for r in self.rollups.values():
            yield from r.rows()


def build(app: Any, stage: RollupStage, rollup_input: Any, rollups: Any, dead_letters: Any, records: Any,
          guard: OffsetGuard) -> Any:
    """Register the rollup agent on a Faust app (its input is re-keyed by bucket by the connection agent)."""

    held: list[Any] = []  # rollup-input events processed but not acked (their rows not sent yet)
    source: list[Any] = []  # the agent's noack stream, for acking from the timer

    async def flush() -> None:
        nonlocal held
        events, held = held, []
        taken = {p: set(keys) for p, keys in stage.dirty.items()}
        try:
            for key, row in stage.take_dirty():
                await rollups.send(key=key.encode(), value=dumps(row), force=True)
        except BaseException:  # nothing is lost: the rows and their input go out with the next flush
            held = events + held
            for p, keys in taken.items():
                stage.dirty.setdefault(p, set()).update(keys)
            raise
        if source:
            gen = app.consumer_generation_id
            for ev in events:
                if ev.message.generation_id == gen:
                    await source[0].ack(ev)

    async def rollup_agent(stream: Any) -> None:
        s = stream.noack()
        source[:] = [s]
        async for event in s.events():
            m = event.message
            if not await guard.admit(m):
                continue
            try:
                stage.add_batch(m.partition, event.value, records)
            except CodecError as e:
                stage.counters[f"dead:{e.reason}"] += 1
                await dead_letters.send(value=dumps({"reason": e.reason, "error": str(e), "topic": m.topic,
                                                     "partition": m.partition, "offset": m.offset}), force=True)
            held.append(event)
            if len(held) >= FLUSH_EVENTS:
                await flush()

    periodic(app, FLUSH_S, stage.counters, "rollup-flush")(flush)
    return app.agent(rollup_input, name="rollup")(rollup_agent)
