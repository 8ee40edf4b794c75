"""Names on rollup rows (wire format v1, additive): countries from the package's table, ASes from the records."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from rstscope.api.continents import _MEMBERS
from rstscope.core.rollup import Rollup
from rstscope.names import as_label, country_label, country_name, country_names

ISO_CODES = Path("/usr/share/iso-codes/json/iso_3166-1.json")


def rec(asn: int, as_name: str, last_ts: float, cc: str = "CN", window: int = 900) -> dict[str, Any]:
    return {"window_start": window, "country": cc, "asn": asn, "as_name": as_name, "last_ts": last_ts,
            "stage": "no_match", "tags": [], "signature": None}


def rows_by_key(roll: Rollup) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["dimension"], r["key"]): r for r in roll.rows()}


def test_country_and_as_rows_carry_names_others_do_not() -> None:
    roll = Rollup()
    roll.extend([rec(4134, "CHINANET-BACKBONE", 1000.0), rec(0, "", 1000.0, cc="XX")])
    rows = rows_by_key(roll)
    assert rows[("country", "CN")]["name"] == "China"
    assert rows[("asn", "4134")]["name"] == "CHINANET-BACKBONE"
    # Unknown has no name on the wire (the API shows "Unknown"); world and country+ASN rows never have one.
    assert "name" not in rows[("country", "XX")] and "name" not in rows[("asn", "0")]
    assert "name" not in rows[("world", "")] and "name" not in rows[("country_asn", "CN:4134")]
    assert rows[("asn", "4134")]["v"] == 1  # additive: the version stays


def test_the_most_recent_non_empty_as_name_wins_whatever_the_order() -> None:
    recs = [rec(64500, "Old Name", 1000.0), rec(64500, "New Name", 1100.0), rec(64500, "", 1200.0),
            rec(64500, "Old Name", 1050.0)]
    for seed in range(6):
        shuffled = recs[:]
        random.Random(seed).shuffle(shuffled)
        roll = Rollup()
        roll.extend(shuffled)
        assert rows_by_key(roll)[("asn", "64500")]["name"] == "New Name"


def test_a_rows_name_depends_only_on_its_own_records() -> None:
    """Rows must come out the same however records are split between rollups (the workers' partitions)."""
    a = rec(64500, "Early", 1000.0, window=900)
    b = rec(64500, "Late", 5000.0, window=4500)
    whole = Rollup()
    whole.extend([a, b])
    left, right = Rollup(), Rollup()
    left.add(a)
    right.add(b)
    assert sorted(whole.rows(), key=str) == sorted([*left.rows(), *right.rows()], key=str)
    assert {r["bucket_start"]: r["name"] for r in whole.rows() if r["dimension"] == "asn"} == {900: "Early",
                                                                                             4500: "Late"}


def test_records_without_as_name_still_roll_up() -> None:
    roll = Rollup()
    roll.add({"window_start": 900, "country": "DE", "asn": 3320, "stage": "post_syn", "tags": [], "signature": None})
    rows = rows_by_key(roll)
    assert "name" not in rows[("asn", "3320")] and rows[("country", "DE")]["name"] == "Germany"


def test_country_table_covers_every_country_the_api_knows() -> None:
    names = country_names()
    members = {cc for codes in _MEMBERS.values() for cc in codes.split()}
    assert members <= set(names)  # every code of the continent table (all of ISO 3166-1, plus XK)
    assert "XX" not in names and len(names) == 250
    assert all(n and n == n.strip() and "\t" not in n for n in names.values())
    assert country_name("ir") == "Iran" and country_name("KR") == "South Korea" and country_name("XK") == "Kosovo"
    assert country_name("XX") == "" and country_label("XX") == "Unknown" and country_label("QQ") == "QQ"
    assert as_label(0, "") == "Unknown" and as_label("4134", "CHINANET-BACKBONE") == "CHINANET-BACKBONE"


@pytest.mark.skipif(not ISO_CODES.is_file(), reason="Debian iso-codes is not installed")
def test_country_table_is_debian_iso_codes() -> None:
    """The shipped table is what its header says: iso-codes' common name, else its name."""
    entries = json.loads(ISO_CODES.read_text(encoding="utf-8"))["3166-1"]
    want = {e["alpha_2"]: e.get("common_name") or e["name"] for e in entries}
    got = {k: v for k, v in country_names().items() if k != "XK"}
    assert got == want
