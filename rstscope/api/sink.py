"""Rollups topic (and alerts topic, when the topology has one) -> store. Offsets are committed only after
the rows are in the store, so a crash replays (harmlessly: rows and alerts are upserts by key) instead of
losing rows.

`apply_batch` is the whole logic and is pure over (messages, store); `run` is the thin consumer loop.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from rstscope.api.store import BadRow, Store, normalize_row, row_identity
from rstscope.core.rollup import RowKey, parse_row_key
from rstscope.insights.model import Alert, alert_from_wire

log = logging.getLogger("rstscope.api.sink")
GROUP_ID = "rstscope-api-sink"


class Message(Protocol):
    def error(self) -> Any: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


@dataclass
class SinkStats:
    upserted: int = 0
    deleted: int = 0
    bad: int = 0  # rollup messages that are not rows (logged and skipped)
    batches: int = 0
    alerts_upserted: int = 0
    alerts_deleted: int = 0
    bad_alerts: int = 0  # alert messages that are not alerts, or keyed by another id (logged and skipped)


def parse_key(key: bytes | None) -> RowKey | None:
    """`"{bucket_start}|{dimension}|{key}"` (TCP) or `"...|{transport}"` (docs/wire-formats.md); None when it
    does not parse."""
    if not key:
        return None
    try:
        return parse_row_key(key.decode())
    except (UnicodeDecodeError, ValueError):
        return None


def parse_alert(m: Message) -> Alert:
    """An alert message: orjson of `Alert.to_wire()`, keyed by the alert's id. ValueError when it is not."""
    value = m.value()
    assert value is not None
    obj = orjson.loads(value)  # orjson.JSONDecodeError is a ValueError
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    alert = alert_from_wire(obj)
    key = m.key()
    if key is not None and key != alert.id.encode():
        raise ValueError(f"message key {key!r} is not the alert's id {alert.id!r}")
    return alert


def apply_alerts(store: Store, messages: Sequence[Message], stats: SinkStats) -> None:
    """Upsert the alerts (the last per id wins), apply tombstones, count and skip malformed messages."""
    alerts: dict[str, Alert] = {}
    deletes: dict[str, None] = {}
    for m in messages:
        if m.error() is not None:
            continue
        if m.value() is None:  # tombstone of the compacted topic
            k = m.key()
            if k:
                alerts.pop(k.decode(errors="replace"), None)
                deletes[k.decode(errors="replace")] = None
            continue
        try:
            alert = parse_alert(m)
        except ValueError as e:
            stats.bad_alerts += 1
            log.warning("skipping bad alert at %s[%s]@%s: %s", m.topic(), m.partition(), m.offset(), e)
            continue
        deletes.pop(alert.id, None)
        alerts[alert.id] = alert
    if deletes:
        stats.alerts_deleted += store.delete_alerts(deletes)
    if alerts:
        stats.alerts_upserted += store.upsert_alerts(alerts.values())


def apply_batch(store: Store, messages: Sequence[Message], stats: SinkStats, alerts_topic: str | None = None) -> None:
    """Upsert the rows (the last per key wins), apply tombstones, count and skip malformed messages; the
    messages of `alerts_topic` are alerts (`apply_alerts`)."""
    rows: dict[RowKey, dict[str, Any]] = {}
    deletes: dict[RowKey, None] = {}
    alert_msgs: list[Message] = []
    for m in messages:
        if m.error() is not None:
            continue
        if alerts_topic is not None and m.topic() == alerts_topic:
            alert_msgs.append(m)
            continue
        value = m.value()
        if value is None:  # tombstone of the compacted topic
            k = parse_key(m.key())
            if k is not None:
                rows.pop(k, None)
                deletes[k] = None
            continue
        try:
            row = orjson.loads(value)
            if not isinstance(row, dict):
                raise BadRow("not a JSON object")
            t = normalize_row(row)
        except (orjson.JSONDecodeError, BadRow) as e:
            stats.bad += 1
            log.warning("skipping bad rollup row at %s[%s]@%s: %s", m.topic(), m.partition(), m.offset(), e)
            continue
        k = row_identity(t)
        deletes.pop(k, None)
        rows[k] = row
    if deletes:
        stats.deleted += store.delete(deletes)
    if rows:
        stats.upserted += store.upsert(rows.values())
    if alert_msgs:
        apply_alerts(store, alert_msgs, stats)
    stats.batches += 1


class Consumer(Protocol):
    def subscribe(self, topics: list[str]) -> None: ...
    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Any]: ...
    def commit(self, asynchronous: bool = ...) -> Any: ...
    def close(self) -> None: ...


def run(consumer: Consumer, store: Store, topic: str, *, stop: threading.Event, alerts_topic: str | None = None,
        batch: int = 1000, on_batch: Callable[[SinkStats], None] | None = None) -> SinkStats:
    """Consume until `stop` is set: store a batch, then commit its offsets (at-least-once, idempotent).
    With `alerts_topic`, that topic is consumed too (same group, same commit-after-store rule)."""
    stats = SinkStats()
    consumer.subscribe([topic] if alerts_topic is None else [topic, alerts_topic])
    try:
        while not stop.is_set():
            msgs = consumer.consume(num_messages=batch, timeout=0.5)
            if not msgs:
                continue
            good = [m for m in msgs if m.error() is None]
            for m in msgs:
                if m.error() is not None:
                    log.warning("consumer error: %s", m.error())
            if not good:
                continue  # nothing to store, and committing with no new offset is an error
            apply_batch(store, good, stats, alerts_topic)
            consumer.commit(asynchronous=False)
            if on_batch is not None:
                on_batch(stats)
    finally:
        consumer.close()
    return stats


def make_consumer(bootstrap: str, group_id: str = GROUP_ID) -> Consumer:
    from confluent_kafka import Consumer as KafkaConsumer

    from rstscope.kafka import security

    c: Consumer = KafkaConsumer({  # type: ignore[assignment]  # its commit() is overloaded, same call shape
        **security.load().librdkafka(),  # TLS / SASL from the environment or $RSTSCOPE_KAFKA_CONFIG
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    })
    return c


def install_stop_handlers(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
