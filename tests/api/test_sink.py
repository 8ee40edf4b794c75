"""Rollups topic -> store: upserts by key, tombstones delete, bad messages are skipped and counted, and
offsets are committed only after the batch is in the store."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from rstscope.api import sink
from rstscope.api.store import Store


@dataclass
class Msg:
    _key: bytes | None
    _value: bytes | None
    _offset: int = 0

    def error(self) -> Any:
        return None

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return "rstscope.rollups"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def msg(row: dict[str, Any], offset: int = 0) -> Msg:
    key = f"{row['bucket_start']}|{row['dimension']}|{row['key']}".encode()
    return Msg(key, orjson.dumps(row), offset)


def test_apply_batch_upserts_deletes_and_skips(rows: list[dict[str, Any]]) -> None:
    store = Store()
    stats = sink.SinkStats()
    batch = [msg(r, i) for i, r in enumerate(rows)] + [Msg(b"k", b"{oops"), Msg(b"k", b"[1]")]
    sink.apply_batch(store, batch, stats)
    sink.apply_batch(store, batch, stats)  # a replay after a crash changes nothing
    assert store.row_count() == len(rows) and stats.bad == 4
    r0 = rows[0]
    sink.apply_batch(store, [Msg(f"{r0['bucket_start']}|{r0['dimension']}|{r0['key']}".encode(), None)], stats)
    assert store.row_count() == len(rows) - 1 and stats.deleted == 1


class FakeConsumer:
    """Hands out prepared batches and records the store's row count at each commit."""

    def __init__(self, batches: list[list[Msg]], store: Store, stop: threading.Event) -> None:
        self.batches, self.store, self.stop = batches, store, stop
        self.commits: list[int] = []
        self.closed = False

    def subscribe(self, topics: list[str]) -> None:
        assert topics == ["rstscope.rollups"]

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        if not self.batches:
            self.stop.set()
            return []
        return list(self.batches.pop(0))

    def commit(self, asynchronous: bool = True) -> None:
        assert asynchronous is False
        self.commits.append(self.store.row_count())

    def close(self) -> None:
        self.closed = True


def test_run_commits_after_the_upsert(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", hold=False)
    stop = threading.Event()
    half = len(rows) // 2
    c = FakeConsumer([[msg(r) for r in rows[:half]], [msg(r) for r in rows[half:]]], store, stop)
    stats = sink.run(c, store, "rstscope.rollups", stop=stop)
    assert c.commits == [half, len(rows)] and c.closed
    assert stats.upserted == len(rows) and stats.batches == 2


@pytest.mark.kafka
@pytest.mark.kafka
def test_real_kafka_round_trip(rows: list[dict[str, Any]], tmp_path: Path, kafka_bootstrap: str) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    bootstrap = kafka_bootstrap
    topic = f"rstscope-api-test-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, 2, 1, config={"cleanup.policy": "compact"})]).values():
        f.result(30)
    p = Producer({"bootstrap.servers": bootstrap})
    for r in rows:
        p.produce(topic, key=f"{r['bucket_start']}|{r['dimension']}|{r['key']}", value=orjson.dumps(r))
    assert p.flush(30) == 0
    store = Store(tmp_path / "k.duckdb", hold=False)
    stop = threading.Event()
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = sink.make_consumer(bootstrap, group)
    t = threading.Thread(target=sink.run, args=(consumer, store, topic), kwargs={"stop": stop})
    t.start()
    deadline = time.monotonic() + 60
    while store.row_count() < len(rows) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    t.join(10)
    assert store.row_count() == len(rows)
    # The offsets were committed: a new sink of the same group finds nothing left to read.
    again = sink.make_consumer(bootstrap, group)
    stats = sink.SinkStats()
    again.subscribe([topic])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msgs = [m for m in again.consume(num_messages=100, timeout=0.5) if m.error() is None]
        sink.apply_batch(store, msgs, stats)
    again.close()
    assert stats.upserted == 0
