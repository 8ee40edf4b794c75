"""Address -> country and ASN, from MaxMind-format (.mmdb) databases and ip-location-db ASN CSVs on disk.

The pure, read-only part of rstscope.geo: the edge, the workers and ``analyze`` import only this, so it
needs nothing but ``maxminddb`` (imported when a database is opened). Downloading lives in
``rstscope.geo.download``, the command line in ``rstscope.geo.cli``.

Unknown is spelled ``country="XX"`` and ``asn=0`` (see :data:`UNKNOWN`): "XX" is the user-assigned
ISO 3166 code conventionally used for "unknown", and AS 0 is reserved (RFC 7607) so it can never be a
real origin AS.
"""

from __future__ import annotations

import bisect
import csv
import functools
import ipaddress
import os
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # imported where used: `rstscope analyze` without a database should not pay for them
    import maxminddb

__all__ = [
    "UNKNOWN",
    "UNKNOWN_ASN",
    "UNKNOWN_COUNTRY",
    "GeoDB",
    "GeoError",
    "GeoInfo",
    "default_geo_dir",
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
