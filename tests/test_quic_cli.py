"""`rstscope quic` as a user runs it: rows per transport (``--rollups``) and clients geolocated
(``--geo``), on the QUIC bed's real capture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rstscope.core.rollup import Rollup
from tests.test_geo import write_mmdb

pytest.importorskip("mmdb_writer")

PCAP = Path(__file__).parent / "fixtures" / "quic_bed.pcap"
SERVERS = "10.78.2.2,10.78.2.3,fd78:2::2,fd78:2::3"


def _quic(tmp_path: Path, *args: str) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    out, rows = tmp_path / "q.jsonl", tmp_path / "r.jsonl"
    r = subprocess.run([sys.executable, "-m", "rstscope.cli", "quic", str(PCAP), "--server-ip", SERVERS,
                        "--out", str(out), "--rollups", str(rows), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return ([json.loads(x) for x in out.read_text().splitlines()],
            [json.loads(x) for x in rows.read_text().splitlines()])


def test_rollups_are_quic_rows_of_the_records(tmp_path: Path) -> None:
    records, rows = _quic(tmp_path)
    assert rows and {r["transport"] for r in rows} == {"quic"}
    expected = Rollup()
    expected.extend(records)
    assert rows == json.loads(json.dumps(list(expected.rows())))
    world = next(r for r in rows if r["dimension"] == "world")
    assert world["total"] == len(records) == 35


def test_geo_places_the_clients(tmp_path: Path) -> None:
    geo = tmp_path / "geo"
    geo.mkdir()
    write_mmdb(geo / "GeoLite2-Country.mmdb", {"10.78.0.0/16": {"country": {"iso_code": "MX"}},
                                                "fd78::/16": {"country": {"iso_code": "DE"}}},
               database_type="GeoLite2-Country")
    write_mmdb(geo / "GeoLite2-ASN.mmdb", {"10.78.0.0/16": {"autonomous_system_number": 8151,
                                                            "autonomous_system_organization": "Telcel"},
                                            "fd78::/16": {"autonomous_system_number": 64501,
                                                          "autonomous_system_organization": "Example Six"}},
               database_type="GeoLite2-ASN")
    records, rows = _quic(tmp_path, "--geo", str(geo))
    for r in records:
        want = ("MX", 8151, "Telcel") if r["ip_version"] == 4 else ("DE", 64501, "Example Six")
        assert (r["country"], r["asn"], r["as_name"]) == want
    countries = {r["key"]: r["total"] for r in rows if r["dimension"] == "country"}
    assert set(countries) == {"MX", "DE"} and sum(countries.values()) == len(records)
