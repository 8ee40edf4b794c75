"""``Rollup.add_many`` (the rollup agent's path) counts exactly what ``add`` per record counts."""

from __future__ import annotations

import random
from typing import Any

import pytest

from rstscope.core.classify import STAGES, TAGS
from rstscope.core.rollup import Rollup


def record(rng: random.Random) -> dict[str, Any]:
    """Few values per field, so that records which fall in one group, and records which differ in one
    field only, are both common."""
    return {
        "window_start": rng.choice([0, 900, 1800, 86400]),
        "country": rng.choice(["CN", "XX", None]),
        "asn": rng.choice([0, 4134, None]),
        "as_name": rng.choice(["", "CHINANET", "TCI", None]),
        "last_ts": rng.choice([None, 0.0, rng.uniform(0, 90000)]),
        "stage": rng.choice(STAGES[:3]),
        "tags": rng.choice([[], ["timeout"], ["reset", "single_rst"], list(TAGS[:3])]),
        "signature": rng.choice([None, "SYN→∅", "PSH+ACK→RST"]),
        "transport": rng.choice([None, "tcp", "quic"]),
    }


def state(r: Rollup) -> Any:
    return ({k: (dict(c.counts), dict(c.tags), dict(c.signatures), c.post_syn_geo_unreliable)
             for k, c in r.cells.items()}, dict(r.as_names), list(r.rows()))


@pytest.mark.parametrize("seed", range(40))
def test_add_many_is_add_per_record(seed: int) -> None:
    rng = random.Random(seed)
    one, many = Rollup(900), Rollup(900)
    for _ in range(4):  # several messages on one Rollup
        batch = [record(rng) for _ in range(rng.randrange(0, 400))]
        keys: set[Any] = set()
        for rec in batch:
            keys.update(one.add(rec))
        assert many.add_many(batch) == keys
    assert state(many) == state(one)


def test_the_latest_record_of_a_group_names_its_asn_row() -> None:
    base = {"window_start": 900, "country": "CN", "asn": 4134, "stage": "no_match", "tags": [], "signature": None}
    r = Rollup(900)
    r.add_many([{**base, "as_name": "OLD", "last_ts": 950.0}, {**base, "as_name": "NEW", "last_ts": 960.0},
                {**base, "as_name": "NEW", "last_ts": 990.0}, {**base, "as_name": "NEW", "last_ts": 970.0}])
    assert r.as_names[(900, "asn", "4134", "tcp")] == (990.0, "NEW")
    assert r.cells[(900, "world", "", "tcp")].counts["no_match"] == 4
