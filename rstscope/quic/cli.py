"""`rstscope quic`: classify the QUIC connections of capture files (docs/quic.md), offline.

The QUIC counterpart of `rstscope analyze` (issue 17): the same windows and cutoff rule, QUIC's
stages, one record per connection attempt; the edge's reader and the worker's table, composed
(`quic.offline`), so a worker's records through Kafka are these.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from rstscope import config
from rstscope.capture.files import CaptureError
from rstscope.core.classify import STAGES
from rstscope.core.rollup import Rollup
from rstscope.geo import GeoDB, GeoError
from rstscope.options import csv_values
from rstscope.outputs import MissingExtra, rollup_writer
from rstscope.quic.offline import classify_files
from rstscope.report import STAGE_LABELS

SNI_POLICIES = ("hash", "keep", "none")


def _locate(geo: GeoDB) -> Callable[[bytes], tuple[str, int, str]]:
    def locate(addr: bytes) -> tuple[str, int, str]:
        g = geo.lookup(addr)
        return g.country, g.asn, g.as_name

    return locate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rstscope quic", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, metavar="FILE", help="pcap / pcapng captures (.gz/.xz/.bz2 too)")
    ap.add_argument("--server-ip", action="append", required=True, metavar="IP|CIDR",
                    help="server addresses (repeatable, comma lists too): QUIC needs them, no SYN tells the side")
    ap.add_argument("--server-port", action="append", type=int, default=None, metavar="PORT",
                    help="server UDP ports (repeatable; default 443)")
    ap.add_argument("--sni", choices=SNI_POLICIES, default="hash",
                    help="what records keep of the SNI: a pseudonym (hash, default), the name (keep), nothing")
    ap.add_argument("--topology", type=Path, default=None)
    ap.add_argument("--geo", type=Path, default=None, metavar="DIR", help="directory with .mmdb files")
    ap.add_argument("--out", type=Path, default=None, help="write one JSON record per connection attempt here")
    ap.add_argument("--rollups", type=Path, default=None, metavar="FILE",
                    help="write QUIC rollup rows (transport quic): JSON lines, or CSV / Parquet by extension")
    ap.add_argument("--format", choices=("table", "json"), default="table")
    args = ap.parse_args(argv)
    ips = csv_values(args.server_ip)
    for f in args.files:
        if not f.is_file():
            print(f"rstscope quic: {f}: no such file", file=sys.stderr)
            return 2
    try:
        topo = config.load(args.topology)
        geo = GeoDB.open(args.geo) if args.geo else None
        records, counters = classify_files(args.files, ips, args.server_port or (443,), topo, args.sni,
                                           _locate(geo) if geo is not None else None)
    except (config.TopologyError, CaptureError, GeoError, ValueError, OSError) as e:
        print(f"rstscope quic: {e}", file=sys.stderr)
        return 2
    if args.rollups is not None:
        try:
            with rollup_writer(args.rollups) as w:
                rollup = Rollup(topo.window.size_s)
                rollup.extend(records)
                for row in rollup.rows():
                    w.write(row)
        except MissingExtra as e:
            print(f"rstscope quic: {e}", file=sys.stderr)
            return 2
    if args.out is not None:
        with args.out.open("wb") as out:
            for r in records:
                out.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))
    stages = Counter(r["stage"] for r in records)
    tags: Counter[str] = Counter(t for r in records for t in r["tags"])
    summary = {"transport": "quic", "connections": len(records), "stages": {s: stages[s] for s in STAGES},
               "tags": dict(sorted(tags.items())), "counters": dict(sorted(counters.items()))}
    if args.format == "json":
        sys.stdout.buffer.write(orjson.dumps(summary, option=orjson.OPT_APPEND_NEWLINE))
        return 0
    total = len(records)
    print(f"{'stage (QUIC)':<13} {'connections':>12} {'share':>8}")
    for s in STAGES:
        share = 100.0 * stages[s] / total if total else 0.0
        print(f"{STAGE_LABELS[s]:<13} {stages[s]:>12,} {share:>7.2f}%")
    print(f"{'total':<13} {total:>12,}")
    if tags:
        print("tags: " + ", ".join(f"{k} {v}" for k, v in sorted(tags.items())))
    print("counters: " + ", ".join(f"{k} {v}" for k, v in sorted(counters.items())))
    return 0
