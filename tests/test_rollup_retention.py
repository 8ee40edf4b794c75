"""The rollup agent's state is bounded by rollup.retention_s: old buckets are forgotten (table entries
deleted, rows and ids dropped, the horizon kept in the table), a record for a forgotten bucket is refused
(counted, handed to the dead letters), and a worker that takes the partition over rebuilds the same state."""

from __future__ import annotations

from typing import Any

from rstscope import config
from rstscope.codecs.jsonl import dumps
from rstscope.core.rollup import RowKey, row_key_of
from rstscope.streams.rollup_agent import NO_HORIZON, RollupStage

B = 900
DAY = 86400
T0 = 1_700_000_000 // DAY * DAY


def rec(i: int, ts: int, stage: str = "post_ack") -> dict[str, Any]:
    return {"id": f"{i:016x}", "window_start": ts // B * B, "stage": stage, "tags": [], "signature": None,
            "country": "MX", "asn": 8151, "as_name": "Telcel", "last_ts": ts + 1.0}


def batch(recs: list[dict[str, Any]]) -> bytes:
    return b"[" + b",".join(dumps(r) for r in recs) + b"]"


def rows(stage: RollupStage) -> dict[RowKey, int]:
    return {row_key_of(r): r["total"] for r in stage.rows()}


def test_old_buckets_are_forgotten_and_later_records_for_them_refused() -> None:
    table: dict[str, bytes] = {}
    st = RollupStage(B, retention_s=2 * DAY)
    st.add_batch(0, batch([rec(1, T0), rec(2, T0 + 60)]), table, offset=1)  # day 0
    st.add_batch(0, batch([rec(3, T0 + DAY)]), table, offset=2)  # day 1
    st.take_dirty()
    assert st.expire(table, 0) == 0  # nothing is 2 days old yet
    st.add_batch(0, batch([rec(4, T0 + 2 * DAY + 3600)]), table, offset=3)  # day 2, 01:00
    st.take_dirty()
    assert st.expire(table, 0) == 1  # day 0's bucket: more than 2 days behind the newest
    assert "0:1" not in table and {"0:2", "0:3", "h:0"} <= set(table)
    assert {k[0] for k in rows(st)} == {T0 + DAY, T0 + 2 * DAY + 3600}
    assert st.counters["expired_buckets"] == 1
    # a late record for the forgotten bucket: refused, counted, handed over for the dead letters
    assert st.add_batch(0, batch([rec(5, T0 + 120)]), table, offset=4) == 0
    assert [r["id"] for r in st.take_expired()] == [f"{5:016x}"] and st.take_expired() == []
    assert st.counters["dead:expired_bucket"] == 1
    assert {k[0] for k in rows(st)} == {T0 + DAY, T0 + 2 * DAY + 3600}
    # a duplicate of a retained record is still a duplicate
    assert st.add_batch(0, batch([rec(3, T0 + DAY)]), table, offset=5) == 0
    assert st.counters["duplicates"] == 1


def test_a_rebuilt_stage_keeps_the_horizon_and_the_retained_rows() -> None:
    table: dict[str, bytes] = {}
    st = RollupStage(B, retention_s=2 * DAY)
    for day in range(6):
        st.add_batch(1, batch([rec(10 * day + k, T0 + day * DAY + k * 900) for k in range(3)]), table, offset=day)
        st.take_dirty()
        st.expire(table, 1)
    again = RollupStage(B, retention_s=2 * DAY)
    again.rollup(1, table)
    assert rows(again) == rows(st) and again.horizon == st.horizon
    assert len([k for k in table if not k.startswith("h:")]) == 3  # days 3, 4, 5: bounded
    assert again.add_batch(1, batch([rec(999, T0)]), table, offset=9) == 0  # before the horizon: refused
    assert again.counters["dead:expired_bucket"] == 1


def test_the_topology_says_how_long() -> None:
    assert config.load().rollup.retention_s == 7 * DAY


def test_nothing_is_written_while_nothing_is_forgotten() -> None:
    """The first expire of a partition used to write its horizon at once (from the checkpoint timer,
    where a Faust table refuses writes: ``timer_error:rollup-checkpoint`` in the fault tests)."""
    table: dict[str, bytes] = {}
    st = RollupStage(B, retention_s=2 * DAY)
    st.add_batch(3, batch([rec(1, T0), rec(2, T0 + DAY)]), table, offset=0)
    st.take_dirty()
    before = dict(table)
    assert st.expire(table, 3) == 0 and table == before and st.horizon[3] == NO_HORIZON
    assert st.expire(table, 4) == 0 and table == before  # a partition it never counted


def test_a_bucket_whose_rows_wait_to_be_sent_is_kept_until_they_were() -> None:
    table: dict[str, bytes] = {}
    st = RollupStage(B, retention_s=2 * DAY)
    st.add_batch(0, batch([rec(1, T0)]), table, offset=1)
    st.add_batch(0, batch([rec(2, T0 + 3 * DAY)]), table, offset=2)  # day 0's rows are not sent yet
    assert st.expire(table, 0) == 0 and st.counters["expire_postponed"] == 1 and "0:1" in table
    sent = {(row["bucket_start"], row["dimension"]) for _k, row in st.take_dirty()}
    assert (T0, "world") in sent
    assert st.expire(table, 0) == 1 and "0:1" not in table and "h:0" in table
