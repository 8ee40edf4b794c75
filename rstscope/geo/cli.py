"""``rstscope geo fetch|lookup`` (also ``python -m rstscope.geo``): the command line over the lookup and
the download modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rstscope.geo.download import DEFAULT_SOURCE, TOP_NOTE, fetch
from rstscope.geo.lookup import GeoDB, GeoError, default_geo_dir

__all__ = ["main"]


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
            print(f"attribution: {dest / TOP_NOTE}  (show it wherever results are displayed)")
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
