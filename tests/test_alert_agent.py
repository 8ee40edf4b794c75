"""The alert agent's pacing (when a unit may be judged) and its feeding of the real detector, without Kafka.

The Kafka path itself is tests/kafka/test_alerts_kafka.py.
"""

from __future__ import annotations

from rstscope.core.rollup import BUCKET_S
from rstscope.streams.alert_agent import AgentStats, Pacer, decode

B = BUCKET_S
T0 = 1_700_000_000 // 86400 * 86400


def test_nothing_is_judged_before_rows_come() -> None:
    p = Pacer(B, settle_s=5, flush_idle_s=60)
    assert p.until(100.0) is None


def test_a_unit_waits_for_a_later_bucket_to_settle() -> None:
    """Rows of bucket b allow judging up to b - one bucket, once they have been seen settle_s."""
    p = Pacer(B, settle_s=5, flush_idle_s=60)
    p.saw(T0, now=0.0)
    p.saw(T0 + 4 * B, now=1.0)
    assert p.until(2.0) is None  # nothing settled yet
    assert p.until(5.5) == T0 - B  # only T0's rows have settled
    assert p.until(6.5) == T0 + 3 * B  # now T0 + 4B has: units ending by T0 + 3B may be judged


def test_a_lagging_partition_lands_within_settle() -> None:
    """A row of an older bucket arriving after a newer one does not move the horizon back."""
    p = Pacer(B, settle_s=5, flush_idle_s=60)
    p.saw(T0 + 8 * B, now=0.0)
    p.saw(T0 + 7 * B, now=3.0)  # another partition, a moment behind
    assert p.until(5.0) == T0 + 7 * B
    assert p.until(8.0) == T0 + 7 * B


def test_quiet_input_judges_everything_seen() -> None:
    p = Pacer(B, settle_s=5, flush_idle_s=60)
    p.saw(T0, now=0.0)
    p.saw(T0 + B, now=1.0)
    assert p.until(30.0) == T0  # T0 + B settled: up to its start minus a bucket
    assert p.until(61.0) == T0 + 2 * B  # quiet for flush_idle_s: the newest bucket is complete


def test_pacer_forgets_old_buckets() -> None:
    p = Pacer(B, settle_s=0, flush_idle_s=1e9)
    for i in range(1000):
        p.saw(T0 + i * B, now=float(i))
        p.until(float(i))
    assert len(p.first_seen) <= 4


def test_decode_counts_what_it_cannot_use() -> None:
    s = AgentStats()
    assert decode(None, s) is None
    assert decode(b"not json", s) is None
    assert decode(b"[1, 2]", s) is None
    assert decode(b'{"bucket_start": 0}', s) == {"bucket_start": 0}
    assert (s.messages, s.tombstones, s.bad_messages) == (4, 1, 2)


def _rows(days: int, seed: int = 3) -> list[dict[str, object]]:
    """World and one ASN's rollup rows, noisy, with post_ack jumping from ~5% to ~40% on day 8, 10:00-14:00."""
    import random

    from rstscope.core.classify import STAGES
    from rstscope.core.rollup import Cell, row_dict

    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    for b in range(T0, T0 + days * 86400, B):
        hot = b >= T0 + 8 * 86400 + 10 * 3600 and b < T0 + 8 * 86400 + 14 * 3600
        for dim, key in (("world", ""), ("asn", "8151")):
            cell = Cell()
            for _ in range(rng.randint(60, 90)):
                x = rng.random()
                stage = "post_ack" if x < (0.4 if hot else 0.05) else STAGES[-1]
                cell.counts[stage] += 1
            out.append(row_dict((b, dim, key, "tcp"), cell, B))
    return out


def test_streaming_judges_a_backlog_as_offline_does() -> None:
    """Rows arriving days ahead of what may be judged (a replayed backlog) keep the baselines of the units
    still to judge: advancing step by step after all rows came gives detect()'s alerts."""
    from rstscope.config import AlertParams
    from rstscope.insights.alerts import AlertDetector, detect

    params = AlertParams(min_connections=100)
    rows = _rows(12)
    offline = {a.id: a for a in detect(rows, params)}
    assert any(a.stage == "post_ack" and a.direction == "rise" for a in offline.values())
    det = AlertDetector(params)
    for r in rows:
        det.add_row(r)
    latest = {}
    for until in range(T0, T0 + 12 * 86400 + 1, 3600):
        latest.update({a.id: a for a in det.advance(until)})
    assert latest == offline
    assert det.stats["late_rows"] == 0
