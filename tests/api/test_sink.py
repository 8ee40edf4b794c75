"""Rollups (and alerts) topics -> store: upserts by key, tombstones delete, bad messages are skipped and
counted, and offsets are committed only after the batch is in the store."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from api.conftest import BASE, make_alert
from rstscope.api import sink
from rstscope.api.store import Store
from rstscope.insights.model import Alert

ALERTS_TOPIC = "rstscope.alerts"


@dataclass
class Msg:
    _key: bytes | None
    _value: bytes | None
    _offset: int = 0
    _topic: str = "rstscope.rollups"

    def error(self) -> Any:
        return None

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def topic(self) -> str:
        return self._topic

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


def alert_msg(a: Alert, offset: int = 0) -> Msg:
    """What the alert agent sends: key = the alert's id, value = orjson of its wire form."""
    return Msg(a.id.encode(), orjson.dumps(a.to_wire()), offset, ALERTS_TOPIC)


OPEN = make_alert("country_asn", "MX:8151", "post_ack", BASE, None, size_pp=40.0, name="Telcel")
GROWN = dataclasses.replace(OPEN, observed_share=50.0, size_pp=45.0)
CLOSED = dataclasses.replace(GROWN, end=BASE + 7200, state="closed")
OTHER = make_alert("asn", "14061", "post_syn", BASE + 3600, BASE + 7200, recurring=True)


def test_apply_batch_upserts_alerts_and_counts_bad_ones(rows: list[dict[str, Any]]) -> None:
    store = Store()
    stats = sink.SinkStats()
    wrong_key = Msg(b"not-its-id", orjson.dumps(OTHER.to_wire()), 0, ALERTS_TOPIC)
    bad = [Msg(b"x", b"{oops", 0, ALERTS_TOPIC), Msg(b"x", b"[1]", 0, ALERTS_TOPIC), wrong_key,
           Msg(b"x", orjson.dumps({**OTHER.to_wire(), "v": 2}), 0, ALERTS_TOPIC)]
    batch = [msg(rows[0]), alert_msg(OPEN), alert_msg(GROWN), *bad, alert_msg(OTHER)]
    sink.apply_batch(store, batch, stats, ALERTS_TOPIC)
    assert (stats.upserted, stats.bad, stats.alerts_upserted, stats.bad_alerts) == (1, 0, 2, 4)
    assert store.alerts(0, 2**40) == [OTHER, GROWN]  # the last version of an id wins
    sink.apply_batch(store, [alert_msg(CLOSED)], stats, ALERTS_TOPIC)
    assert store.alerts(0, 2**40, state="closed") == [OTHER, CLOSED] and store.alert_count() == 2
    sink.apply_batch(store, [Msg(OTHER.id.encode(), None, 0, ALERTS_TOPIC)], stats, ALERTS_TOPIC)  # tombstone
    assert store.alerts(0, 2**40) == [CLOSED] and stats.alerts_deleted == 1
    # Without an alerts topic, an alert is just a bad rollup row: nothing is taken for what it is not.
    plain = sink.SinkStats()
    sink.apply_batch(store, [alert_msg(OTHER)], plain)
    assert plain.bad == 1 and plain.alerts_upserted == 0 and store.alert_count() == 1


class FakeConsumer:
    """Hands out prepared batches and records the store's row count at each commit."""

    def __init__(self, batches: list[list[Msg]], store: Store, stop: threading.Event,
                 topics: tuple[str, ...] = ("rstscope.rollups",)) -> None:
        self.batches, self.store, self.stop, self.topics = batches, store, stop, topics
        self.commits: list[int] = []
        self.alert_commits: list[int] = []
        self.closed = False

    def subscribe(self, topics: list[str]) -> None:
        assert topics == list(self.topics)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        if not self.batches:
            self.stop.set()
            return []
        return list(self.batches.pop(0))

    def commit(self, asynchronous: bool = True) -> None:
        assert asynchronous is False
        self.commits.append(self.store.row_count())
        self.alert_commits.append(self.store.alert_count())

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


def test_run_consumes_the_alerts_topic_and_commits_after_the_upsert(rows: list[dict[str, Any]],
                                                                   tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb", hold=False)
    stop = threading.Event()
    c = FakeConsumer([[msg(rows[0]), alert_msg(OPEN)], [alert_msg(OTHER), alert_msg(CLOSED)]], store, stop,
                     ("rstscope.rollups", ALERTS_TOPIC))
    stats = sink.run(c, store, "rstscope.rollups", stop=stop, alerts_topic=ALERTS_TOPIC)
    assert c.commits == [1, 1] and c.alert_commits == [1, 2] and c.closed
    assert stats.alerts_upserted == 3 and store.alerts(0, 2**40) == [OTHER, CLOSED]


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


@pytest.mark.kafka
def test_real_kafka_alerts_topic(rows: list[dict[str, Any]], tmp_path: Path, kafka_bootstrap: str) -> None:
    """Rollups and alerts on two compacted topics of a real broker, one sink: both land in the store, the
    latest version of each alert id wins, bad alerts are counted, offsets are committed."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    suffix = uuid.uuid4().hex[:8]
    rollups, alerts = f"rstscope-api-test-r-{suffix}", f"rstscope-api-test-a-{suffix}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for f in admin.create_topics([NewTopic(t, 1, 1, config={"cleanup.policy": "compact"})
                                  for t in (rollups, alerts)]).values():
        f.result(30)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for r in rows:
        p.produce(rollups, key=f"{r['bucket_start']}|{r['dimension']}|{r['key']}", value=orjson.dumps(r))
    for a in (OPEN, OTHER, GROWN, CLOSED):
        p.produce(alerts, key=a.id, value=orjson.dumps(a.to_wire()))
    p.produce(alerts, key=b"junk", value=b"{not json")
    assert p.flush(30) == 0
    store = Store(tmp_path / "k.duckdb", hold=False)
    stop = threading.Event()
    group = f"g-{suffix}"
    seen: list[sink.SinkStats] = []
    consumer = sink.make_consumer(kafka_bootstrap, group)
    t = threading.Thread(target=sink.run, args=(consumer, store, rollups),
                         kwargs={"stop": stop, "alerts_topic": alerts, "on_batch": seen.append})
    t.start()
    deadline = time.monotonic() + 60
    # (the sink upserts each alert id's latest version of a batch once: wait for what the store must hold)
    while time.monotonic() < deadline and not (seen and seen[-1].bad_alerts == 1 and store.row_count() == len(rows)
                                                and store.alerts(0, 2**40) == [OTHER, CLOSED]):
        time.sleep(0.2)
    stop.set()
    t.join(10)
    assert store.row_count() == len(rows)
    assert store.alerts(0, 2**40) == [OTHER, CLOSED] and seen[-1].bad_alerts == 1
    again = sink.make_consumer(kafka_bootstrap, group)
    stats = sink.SinkStats()
    again.subscribe([rollups, alerts])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msgs = [m for m in again.consume(num_messages=100, timeout=0.5) if m.error() is None]
        sink.apply_batch(store, msgs, stats, alerts)
    again.close()
    assert stats.upserted == 0 and stats.alerts_upserted == 0 and stats.bad_alerts == 0
