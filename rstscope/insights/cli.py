"""``rstscope alerts`` and ``rstscope outliers``: the insights over a rollups file of ``rstscope analyze``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rstscope import config
from rstscope.codecs.errors import MalformedRecord
from rstscope.codecs.jsonl import read_lines
from rstscope.core.classify import STAGES
from rstscope.core.rollup import TCP, TRANSPORTS, Cell, transport_of
from rstscope.insights.alerts import detector
from rstscope.insights.outliers import OUTLIER_DIMENSIONS, peer_of, rank_outliers


class InputError(Exception):
    """The input cannot be read as rollup rows."""


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Rollup rows of a JSON lines file (what ``rstscope analyze --rollups FILE.jsonl`` writes)."""
    if path.suffix in (".csv", ".parquet"):
        raise InputError(f"{path}: give the JSON lines rollups (rstscope analyze --rollups FILE.jsonl)")
    try:
        for _n, row in read_lines(path):
            yield row
    except MalformedRecord as e:
        raise InputError(f"{e} (not a rollup row)") from e
    except OSError as e:
        raise InputError(f"{path}: {e}") from e


def _alerts(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rstscope alerts", description="change alerts over a rollups file")
    ap.add_argument("--rollups", required=True, type=Path, help="JSON lines of rollup rows")
    ap.add_argument("--topology", help="topology.yaml with the alerts: thresholds")
    ap.add_argument("--out", type=Path, help="write here instead of stdout")
    ap.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    args = ap.parse_args(argv)
    try:
        params = config.load(args.topology).alerts
        det = detector(read_rows(args.rollups), params)
    except (InputError, config.TopologyError, ValueError) as e:
        print(f"rstscope alerts: {e}", file=sys.stderr)
        return 2
    if det.stats["rows"] and det.stats["bad_rows"] == det.stats["rows"]:
        print(f"rstscope alerts: {args.rollups}: no valid rollup row", file=sys.stderr)
        return 2
    alerts = det.alerts()
    if args.format == "jsonl":
        text = "".join(json.dumps(a.to_wire(), ensure_ascii=False) + "\n" for a in alerts)
    else:
        head = f"{'start':>10} {'end':>10} {'network':<24} {'stage':<14} {'dir':<4} {'size_pp':>8} {'z':>6} rec name"
        lines = [head] + [
            f"{a.start:>10} {a.end if a.end is not None else 'open':>10} {a.dimension + ':' + a.key:<24} "
            f"{a.stage:<14} {a.direction:<4} {a.size_pp:>8.1f} {a.score:>6.1f} "
            f"{'R' if a.recurring else '-':>3} {a.name}"
            for a in alerts]
        text = "\n".join(lines) + "\n"
    _write(args.out, text)
    s = det.stats
    other = f", {s['other_transport']} of other transports than tcp left out" if s["other_transport"] else ""
    print(f"rstscope alerts: {s['rows']} rows ({s['bad_rows']} bad, {s['late_rows']} late{other}), "
          f"{s['units_judged']} units judged ({s['units_small']} too small, {s['units_no_baseline']} without "
          f"baseline), {len(alerts)} alerts ({s['recurring']} recurring)", file=sys.stderr)
    return 0


def _outliers(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rstscope outliers", description="networks that stand out from their peers")
    ap.add_argument("--rollups", required=True, type=Path, help="JSON lines of rollup rows")
    ap.add_argument("--dimension", required=True, choices=OUTLIER_DIMENSIONS)
    ap.add_argument("--start", type=int, help="unix seconds, inclusive (default: the first bucket)")
    ap.add_argument("--end", type=int, help="unix seconds, exclusive (default: after the last bucket)")
    ap.add_argument("--range", help="the last span of the input: 1d, 7d, 12h")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--transport", choices=TRANSPORTS, default=TCP,
                    help="rank the networks of this transport's rows, against peers of the same (default tcp)")
    ap.add_argument("--topology", help="topology.yaml with the outliers: thresholds")
    ap.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    args = ap.parse_args(argv)
    try:
        params = config.load(args.topology).outliers
        rows = list(read_rows(args.rollups))
        span = _span(args.range) if args.range else None
    except (InputError, config.TopologyError, ValueError) as e:
        print(f"rstscope outliers: {e}", file=sys.stderr)
        return 2
    if args.range and (args.start is not None or args.end is not None):
        print("rstscope outliers: give --range or --start/--end, not both", file=sys.stderr)
        return 2
    valid = [r for r in rows if _valid(r)]
    good = [r for r in valid if transport_of(r) == args.transport]  # peers of the same transport only
    if not good:
        what = f" of transport {args.transport}" if valid else ""
        print(f"rstscope outliers: {args.rollups}: no valid rollup row{what}", file=sys.stderr)
        return 2
    last = max(int(r["bucket_start"]) + int(r.get("bucket_s", 0)) for r in good)
    start, end = (last - span, last) if span else (args.start, args.end)
    peer_dim = "country" if args.dimension == "country_asn" else "world"
    cells: dict[str, Cell] = {}
    peers: dict[str, Cell] = {}
    names: dict[str, str] = {}
    used = 0
    for r in good:
        b = int(r["bucket_start"])
        if (start is not None and b < start) or (end is not None and b >= end):
            continue
        target = cells if r["dimension"] == args.dimension else peers if r["dimension"] == peer_dim else None
        if target is None:
            continue
        used += 1
        cell = target.setdefault(str(r["key"]), Cell())
        for s in STAGES:
            cell.counts[s] += int(r["counts"].get(s, 0))
        if r.get("name") and target is cells:
            names[str(r["key"])] = str(r["name"])
    found = rank_outliers(cells, args.dimension, peers, params, names=names, limit=args.limit)
    if args.format == "jsonl":
        text = "".join(json.dumps(o.to_wire(), ensure_ascii=False) + "\n" for o in found)
    else:
        text = "\n".join(
            [f"{'network':<16} {'peer':<12} {'conns':>8} {'dist_pp':>8} {'conf':>7} stage (share vs peers) name"]
            + [f"{o.key:<16} {o.peer:<12} {o.connections:>8} {o.distance:>8.1f} {o.confidence:>7.4f} "
               f"{o.stage} ({o.share:.1f} vs {o.peer_share:.1f}) {o.name}" for o in found]) + "\n"
    _write(None, text)
    other = f", {len(valid) - len(good)} of other transports" if len(valid) > len(good) else ""
    print(f"rstscope outliers: {len(rows)} rows ({len(rows) - len(valid)} bad{other}, {used} in range), "
          f"{len(cells)} {args.dimension} networks, {len(found)} outliers", file=sys.stderr)
    return 0


def _valid(r: dict[str, Any]) -> bool:
    try:
        int(r["bucket_start"])
        return isinstance(r["counts"], dict) and str(r["dimension"]) != "" and "key" in r
    except (KeyError, TypeError, ValueError):
        return False


def _span(text: str) -> int:
    units = {"d": 86400, "h": 3600, "m": 60}
    try:
        return int(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"--range {text!r}: give a number and d, h or m (7d, 12h)") from None


def _write(out: Path | None, text: str) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    """``argv[0]`` is the command's name (alerts | outliers), as rstscope.cli's NAMED hands it over."""
    if not argv or argv[0] not in ("alerts", "outliers"):
        print("usage: rstscope alerts|outliers ...", file=sys.stderr)
        return 2
    return _alerts(argv[1:]) if argv[0] == "alerts" else _outliers(argv[1:])


__all__ = ["main", "peer_of", "read_rows"]
