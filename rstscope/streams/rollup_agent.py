"""The rollup stage: rollup input (records keyed by bucket) -> Rollup -> upserts on the rollups topic.

A rollup row (bucket, dimension, value) sums connections from every packets partition, so one owner
per row is needed: the connection agent sends each record twice, to the public connections topic
(keyed by id) and, in batches (a JSON array per message), to the internal ``<app id>-rollup-input``
topic keyed by its 15-minute bucket, so every bucket lives on exactly one partition there. (A separate
agent re-keying the connections topic cost a consume and a send per record, and one more set of
offsets to keep in order.)

State is one Faust table, ``rollup-records`` (changelog ``<app id>-rollup-records-changelog``,
compacted, co-partitioned with the rollup input). Each rollup-input message that brought new
connections writes one entry, ``<partition>:<offset>`` -> the ids of those connections and the few
fields the rollup reads: one changelog write per message, not per connection (a Faust table write
costs a produce). It is the de-duplication set *and* the source of the counts, so a replay can
neither double count nor lose a count: a connection whose id the table holds is not counted again.
The per-partition Rollup objects and id sets are a cache of the table, rebuilt from it after every
rebalance or restart (Faust restores the table from its changelog before streams resume). The
upserts of a duplicate are re-sent: that covers a crash after the table write but before the upsert
went out.

Records of every transport (TCP, QUIC) come on the same input; a row's key holds its transport
(core/rollup.py), so their counts never mix, and the table, retention and horizon are the same for both.

State is bounded (``rollup.retention_s`` of topology.yaml, 7 days): once a partition has counted a
bucket that far past older ones, ``expire`` deletes the table entries whose connections all lie in those
older buckets (tombstones in the changelog, so a restore reads only the retained days), forgets their ids
and rows, and writes the partition's horizon into the table (entry ``h:<partition>``). The rows' final
values stay on the compacted rollups topic. A record that arrives later for a forgotten bucket cannot be
counted without overwriting that final row with a partial one, so it is refused: counted as
``expired_bucket`` and sent to the dead letters.

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
from rstscope.config import RollupParams
from rstscope.core.rollup import TRANSPORTS, Rollup, RowKey, bucket_of, row_key_text, row_keys, transport_of
from rstscope.gc_policy import paused
from rstscope.streams.checkpoint import Checkpoint
from rstscope.streams.faust_internals import AckRef
from rstscope.streams.offsets import OffsetGuard

FLUSH_S = 0.2
FLUSH_EVENTS = 2000
NO_HORIZON = -(2**62)  # nothing forgotten yet
# what Rollup.add reads of a record (as_name and last_ts: the name of an asn row, latest wins; transport
# last, so that entries written before it read as None there: a TCP record)
_FIELDS = ("window_start", "country", "asn", "stage", "tags", "signature", "as_name", "last_ts", "transport")


def compact(record: Mapping[str, Any]) -> list[Any]:
    """What the table keeps per connection: its id and the rollup's inputs."""
    return [record["id"], *(record.get(k) for k in _FIELDS)]


class RollupStage:
    """Kafka-free rollup logic over a mapping ``records`` (a Faust table in the worker)."""

    def __init__(self, bucket_s: int, retention_s: float = RollupParams().retention_s) -> None:
        self.bucket_s = bucket_s
        self.retention_s = retention_s
        self.rollups: dict[int, Rollup] = {}
        # partition -> bucket -> ids counted (the table's, cached): an id's bucket is fixed (its window)
        self.seen: dict[int, dict[int, set[str]]] = {}
        self.entries: dict[int, dict[str, int]] = {}  # partition -> table key -> newest bucket of its rows
        self.horizon: dict[int, int] = {}  # partition -> buckets before this are forgotten
        self.dirty: dict[int, set[RowKey]] = {}
        self.expired: list[dict[str, Any]] = []  # records refused since the last take_expired()
        self.counters: Counter[str] = Counter()

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            for d in (self.rollups, self.seen, self.entries, self.horizon, self.dirty):
                d.pop(p, None)

    def rollup(self, partition: int, records: Any) -> Rollup:
        """The partition's Rollup, rebuilt from the table when this worker does not have it yet."""
        r = self.rollups.get(partition)
        if r is None:
            with paused():  # a bulk load of live rows: nothing for the collector to find
                r = self._rebuild(partition, records)
        return r

    def _rebuild(self, partition: int, records: Any) -> Rollup:
        """Count the partition's rows again from the table (after a rebalance or restart)."""
        r = self.rollups[partition] = Rollup(self.bucket_s)
        seen = self.seen[partition] = {}
        entries = self.entries[partition] = {}
        mark = records.get(f"h:{partition}")
        horizon = self.horizon[partition] = int(orjson.loads(mark)["h"]) if mark else NO_HORIZON
        for key, value in records.items():
            d = orjson.loads(value)
            if d.get("p") != partition or "h" in d:
                continue
            newest = -1
            for row in d["r"]:
                # strict=False: entries of earlier workers hold fewer fields (missing: None)
                rec = dict(zip(_FIELDS, row[1:], strict=False))
                b = bucket_of(rec, self.bucket_s)
                if b < horizon:  # forgotten; the entry stays for its newer rows
                    continue
                seen.setdefault(b, set()).add(row[0])
                r.add(rec)
                newest = max(newest, b)
            entries[key] = newest
        self.counters["rebuilds"] += 1
        return r

    def add_batch(self, partition: int, value: bytes, records: Any, offset: int = 0) -> int:
        """Count a rollup-input message (a JSON array of connection records) at ``offset`` of
        ``partition``: each connection once per id. Returns how many were new."""
        recs = loads_array(value)
        r = self.rollup(partition, records)
        seen = self.seen[partition]
        new: list[list[Any]] = []
        fresh: list[Mapping[str, Any]] = []
        dirty = self.dirty.setdefault(partition, set())
        for rec in recs:  # the whole message is refused before anything of it is counted
            if not isinstance(rec, dict):
                raise MalformedRecord("connection record is not a JSON object")
            if not isinstance(rec.get("id"), str) or "window_start" not in rec or "stage" not in rec:
                raise MalformedRecord("connection record without id, window_start or stage")
            if transport_of(rec) not in TRANSPORTS:
                raise MalformedRecord(f"connection record of an unknown transport {rec.get('transport')!r}")
        horizon = self.horizon.get(partition, NO_HORIZON)
        newest = -1
        for rec in recs:
            rid = rec["id"]
            b = bucket_of(rec, self.bucket_s)
            if b < horizon:  # its bucket's final row is on the rollups topic; counting it would replace that
                self.counters["dead:expired_bucket"] += 1
                self.expired.append(rec)
                continue
            ids = seen.setdefault(b, set())
            if rid in ids:
                self.counters["duplicates"] += 1
                dirty.update(row_keys(rec, self.bucket_s))
                continue
            ids.add(rid)
            new.append(compact(rec))
            fresh.append(rec)
            newest = max(newest, b)
        dirty.update(r.add_many(fresh))
        if new:
            key = f"{partition}:{offset}"
            records[key] = orjson.dumps({"p": partition, "r": new})
            self.entries.setdefault(partition, {})[key] = newest
            self.counters["counted"] += len(new)
        return len(new)

    def take_expired(self) -> list[dict[str, Any]]:
        """The records refused because their bucket was forgotten (the caller dead-letters them)."""
        out, self.expired = self.expired, []
        return out

    def expire(self, records: Any, partition: int) -> int:
        """Forget the buckets of ``partition`` more than ``retention_s`` behind the newest one it counted:
        their table entries (deleted), ids and rows. Returns the buckets forgotten.

        Call it while processing a message of ``partition`` (the agent does, after counting it): a Faust
        table takes writes only inside stream iteration, and files them under the current message's
        partition, which is where this partition's entries live. A bucket whose rows are still waiting to
        be sent is kept until they were (its final value must reach the rollups topic first). The horizon
        moves, and is written, only when something is forgotten."""
        seen = self.seen.get(partition)
        if not seen:
            return 0
        h = int((max(seen) - self.retention_s) // self.bucket_s * self.bucket_s)
        if h <= self.horizon.get(partition, NO_HORIZON):
            return 0
        old = [b for b in seen if b < h]  # cheap (a bucket per 15 minutes): checked per message
        if not old:
            return 0  # stale entries come with old buckets: no scan of the entries per message
        entries = self.entries.get(partition, {})
        stale = [k for k, newest in entries.items() if newest < h]
        if any(k[0] < h for k in self.dirty.get(partition, ())):
            self.counters["expire_postponed"] += 1  # their rows go out with the next checkpoint
            return 0
        for key in stale:
            del records[key]
            del entries[key]
        for b in old:
            del seen[b]
        r = self.rollups.get(partition)
        if r is not None:
            for k in [k for k in r.cells if k[0] < h]:
                del r.cells[k]
                r.as_names.pop(k, None)
        self.horizon[partition] = h
        records[f"h:{partition}"] = orjson.dumps({"p": partition, "h": h})
        self.counters["expired_buckets"] += len(old)
        return len(old)

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
    """Register the rollup agent on a Faust app (its input is re-keyed by bucket by the connection agent).
    Its checkpoint (streams/checkpoint.py) sends the changed rows, then acks the input they include."""

    held: list[AckRef] = []  # rollup-input messages processed but not acked (their rows not sent yet)

    async def send_rows() -> None:
        taken = {p: set(keys) for p, keys in stage.dirty.items()}
        try:
            for key, row in stage.take_dirty():
                await rollups.send(key=key.encode(), value=dumps(row), force=True)
        except BaseException:  # nothing is lost: the rows go out with the next checkpoint
            for p, keys in taken.items():
                stage.dirty.setdefault(p, set()).update(keys)
            raise

    def done() -> list[AckRef]:
        refs = held[:]
        held.clear()
        return refs

    cp = Checkpoint(app, "rollup", stage.counters, produce=(send_rows,), done=done, interval=FLUSH_S)

    async def rollup_agent(stream: Any) -> None:
        async for event in stream.noack().events():
            m = event.message
            if not await guard.admit(m):
                continue
            async with cp.lock:
                try:
                    stage.add_batch(m.partition, event.value, records, m.offset)
                except CodecError as e:
                    stage.counters[f"dead:{e.reason}"] += 1
                    await dead_letters.send(value=dumps({"reason": e.reason, "error": str(e), "topic": m.topic,
                                                         "partition": m.partition, "offset": m.offset}), force=True)
                stage.expire(records, m.partition)  # here: a table write needs stream iteration
                expired = stage.take_expired()
                if expired:
                    await dead_letters.send(value=dumps({
                        "reason": "expired_bucket", "topic": m.topic, "partition": m.partition, "offset": m.offset,
                        "error": f"{len(expired)} record(s) for buckets before {stage.horizon[m.partition]}, "
                                 "forgotten after rollup.retention_s", "ids": [r["id"] for r in expired]}), force=True)
                held.append(AckRef.of(m))
            if len(held) >= FLUSH_EVENTS:
                await cp.commit()

    return app.agent(rollup_input, name="rollup")(rollup_agent)
