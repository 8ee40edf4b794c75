"""Rollup rows per transport (issue 17): a TCP and a QUIC connection of the same bucket and network count
in separate rows; TCP rows keep their Kafka key text, QUIC rows are keyed with `|quic`; the rollup agent's
stage counts, de-duplicates, rebuilds and expires rows of both transports the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from rstscope.codecs.errors import MalformedRecord
from rstscope.codecs.jsonl import dumps
from rstscope.config import Topology
from rstscope.core.rollup import (
    TRANSPORTS,
    Rollup,
    parse_row_key,
    row_key_of,
    row_key_text,
    transport_of,
)
from rstscope.offline import Analyzer, Options
from rstscope.quic.offline import classify_files
from rstscope.streams.rollup_agent import _FIELDS, RollupStage

B = 900
T0 = 1_700_000_000 // 86400 * 86400
FIXTURES = Path(__file__).resolve().parent / "fixtures"
QUIC_SERVERS = ("10.78.2.2", "10.78.2.3", "fd78:2::2", "fd78:2::3")


def tcp(i: int, ts: int = T0, stage: str = "post_psh") -> dict[str, Any]:
    """A TCP connection record as the core makes it: no transport field."""
    return {"id": f"{i:016x}", "window_start": ts // B * B, "stage": stage, "tags": ["reset"], "signature": None,
            "country": "MX", "asn": 8151, "as_name": "Telcel", "last_ts": ts + 1.0}


def quic(i: int, ts: int = T0, stage: str = "post_syn") -> dict[str, Any]:
    return {**tcp(i, ts, stage), "id": f"{i + 1000:016x}", "transport": "quic", "tags": ["timeout"]}


def batch(recs: list[dict[str, Any]]) -> bytes:
    return b"[" + b",".join(dumps(r) for r in recs) + b"]"


def test_transport_of_a_record_without_the_field_is_tcp() -> None:
    assert TRANSPORTS == ("tcp", "quic")
    assert transport_of(tcp(1)) == "tcp" and transport_of(quic(1)) == "quic"
    assert transport_of({"transport": None}) == "tcp"


def test_a_tcp_and_a_quic_connection_of_one_bucket_and_country_make_two_rows() -> None:
    roll = Rollup()
    roll.extend([tcp(1), tcp(2, stage="no_match"), quic(3)])
    rows = {row_key_of(r): r for r in roll.rows()}
    assert len(rows) == 8  # world, country, asn, country_asn, for each transport
    t, q = rows[(T0, "country", "MX", "tcp")], rows[(T0, "country", "MX", "quic")]
    assert (t["transport"], t["total"], t["counts"]["post_psh"], t["counts"]["no_match"]) == ("tcp", 2, 1, 1)
    assert (q["transport"], q["total"], q["counts"]["post_syn"], q["tags"]) == ("quic", 1, 1, {"timeout": 1})
    assert rows[(T0, "asn", "8151", "quic")]["name"] == rows[(T0, "asn", "8151", "tcp")]["name"] == "Telcel"


def test_row_key_texts() -> None:
    """TCP keys keep the text they had before transports; other transports add theirs; one text per row."""
    assert row_key_text((T0, "country_asn", "DE:3320", "tcp")) == f"{T0}|country_asn|DE:3320"
    assert row_key_text((T0, "world", "", "tcp")) == f"{T0}|world|"
    assert row_key_text((T0, "country_asn", "DE:3320", "quic")) == f"{T0}|country_asn|DE:3320|quic"
    assert row_key_text((T0, "world", "", "quic")) == f"{T0}|world||quic"
    for key in [(T0, "world", "", "tcp"), (T0, "asn", "3320", "quic"), (T0, "country_asn", "XX:0", "quic")]:
        assert parse_row_key(row_key_text(key)) == key
    for bad in (f"{T0}|world||tcp", f"{T0}|world||sctp", f"{T0}|world", "x|world|", f"{T0}|a|b|quic|x"):
        with pytest.raises(ValueError):
            parse_row_key(bad)


def test_the_stage_counts_mixed_records_per_transport() -> None:
    table: dict[str, bytes] = {}
    st = RollupStage(B, retention_s=2 * 86400)
    assert st.add_batch(0, batch([tcp(1), quic(2), tcp(3)]), table, offset=1) == 3
    sent = dict(st.take_dirty())
    assert sent[f"{T0}|world|"]["total"] == 2 and sent[f"{T0}|world|"]["transport"] == "tcp"
    assert sent[f"{T0}|world||quic"]["total"] == 1 and sent[f"{T0}|world||quic"]["transport"] == "quic"
    assert len(sent) == 8 and all(row_key_text(row_key_of(r)) == k for k, r in sent.items())
    # a duplicate is not counted again, and its own rows (only those) are sent again
    assert st.add_batch(0, batch([quic(2)]), table, offset=2) == 0
    again = dict(st.take_dirty())
    assert set(again) == {k for k in sent if k.endswith("|quic")} and again[f"{T0}|world||quic"]["total"] == 1
    # a worker taking the partition over rebuilds both transports' rows from the table
    other = RollupStage(B, retention_s=2 * 86400)
    other.rollup(0, table)
    assert sorted(map(row_key_of, other.rows())) == sorted(map(row_key_of, st.rows()))
    assert {row_key_text(row_key_of(r)): r for r in other.rows()} == {row_key_text(row_key_of(r)): r for r in st.rows()}


def test_table_entries_written_before_transports_are_tcp() -> None:
    """An entry of an earlier worker holds the fields before ``transport``: its records count as TCP."""
    assert _FIELDS[-1] == "transport"
    old = [[r["id"], *(r.get(k) for k in _FIELDS[:-1])] for r in (tcp(1), tcp(2))]
    table = {"0:5": orjson.dumps({"p": 0, "r": old})}
    st = RollupStage(B)
    st.rollup(0, table)
    assert {row_key_of(r) for r in st.rows()} >= {(T0, "world", "", "tcp")}
    assert {r["transport"] for r in st.rows()} == {"tcp"}


def test_a_record_of_an_unknown_transport_is_malformed() -> None:
    st = RollupStage(B)
    with pytest.raises(MalformedRecord, match="transport"):
        st.add_batch(0, batch([tcp(1), {**tcp(2), "transport": "sctp"}]), {}, offset=1)
    assert list(st.rows()) == []  # the whole message is refused


def test_retention_expires_both_transports() -> None:
    day = 86400
    table: dict[str, bytes] = {}
    st = RollupStage(B, retention_s=2 * day)
    st.add_batch(0, batch([tcp(1), quic(2)]), table, offset=1)  # day 0
    st.add_batch(0, batch([tcp(3, T0 + 3 * day), quic(4, T0 + 3 * day)]), table, offset=2)  # day 3
    st.take_dirty()
    assert st.expire(table, 0) == 1
    assert {(k[0], k[3]) for k in map(row_key_of, st.rows())} == {(T0 + 3 * day, "tcp"), (T0 + 3 * day, "quic")}
    assert st.add_batch(0, batch([quic(5)]), table, offset=3) == 0  # a QUIC record of the forgotten bucket
    assert st.counters["dead:expired_bucket"] == 1
    rebuilt = RollupStage(B, retention_s=2 * day)
    rebuilt.rollup(0, table)
    assert sorted(map(row_key_of, rebuilt.rows())) == sorted(map(row_key_of, st.rows()))


def test_real_records_of_both_transports() -> None:
    """The QUIC bed's records and a TCP fixture's in one rollup: the TCP rows are exactly the TCP-only
    rollup's, the QUIC rows count every QUIC record."""
    quic_recs, _ = classify_files([FIXTURES / "quic_bed.pcap"], QUIC_SERVERS)
    tcp_recs: list[Any] = []
    Analyzer(Topology(), Options(), on_record=tcp_recs.append).run([FIXTURES / "http_ok.pcap"])
    assert quic_recs and tcp_recs and all(transport_of(r) == "tcp" for r in tcp_recs)
    both, alone = Rollup(), Rollup()
    both.extend([*tcp_recs, *quic_recs])
    alone.extend(tcp_recs)
    rows = list(both.rows())
    assert [r for r in rows if r["transport"] == "tcp"] == list(alone.rows())
    quic_world = [r for r in rows if r["transport"] == "quic" and r["dimension"] == "world"]
    assert sum(r["total"] for r in quic_world) == len(quic_recs)
