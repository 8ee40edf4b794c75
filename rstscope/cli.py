"""The `rstscope` command: analyze | geo | local-kafka (and the streaming commands as they land)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from rstscope import __version__
from rstscope.options import csv_values, port_list, probability


def _ports(values: list[str] | None) -> list[int]:
    try:
        return port_list(values)
    except ValueError as e:
        raise SystemExit(f"rstscope: {e}") from None


def add_analyze(sub: Any) -> None:
    p = sub.add_parser("analyze", help="classify the connections in capture files",
                       description="Classify the TCP connections in pcap/pcapng files (maybe .gz/.xz).")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--server-ip", action="append", metavar="IP|CIDR",
                   help="server addresses or networks (repeatable, comma lists); default: the SYN's receiver")
    p.add_argument("--server-port", action="append", metavar="PORT", help="server ports (repeatable, comma lists)")
    p.add_argument("--sample", type=probability, default=1.0, metavar="P",
                   help="probability of keeping a new connection (default 1: every connection)")
    p.add_argument("--sample-mode", choices=("random", "hash"), default=None,
                   help="random (secret key per run) or hash (same decision for a tuple on every host)")
    p.add_argument("--idle", type=float, default=None, metavar="S",
                   help="idle mode (not the blog's method; results say so): a connection quiet for S seconds is a "
                        "timeout at once (default: window mode, no inactivity timer)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="a connection that did not end is a timeout when its last packet lies S seconds or more "
                        "before the cutoff (its window's end or the input's end), else incomplete (default 10)")
    p.add_argument("--grace", type=float, default=None, metavar="S",
                   help="an ended connection takes further packets for S seconds after its last one (default 10)")
    p.add_argument("--geo", type=Path, default=None, metavar="DIR", help="directory with .mmdb files")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="write connections: JSON lines, or CSV / Parquet for a .csv / .parquet FILE (docs/outputs.md)")
    p.add_argument("--rollups", type=Path, default=None, metavar="FILE",
                   help="write rollup rows: JSON lines, or CSV / Parquet for a .csv / .parquet FILE")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--topology", type=Path, default=None, help="topology.yaml to use")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: when stderr is a terminal)")
    p.add_argument("--engine", choices=("batch", "packet"), default="batch",
                   help="batch: vectorized, in time slices of bounded memory (default; falls back to packet "
                        "when it does not apply); packet: the reference per-packet path")


def run_analyze(args: argparse.Namespace) -> int:
    from rstscope import config
    from rstscope.capture.files import CaptureError
    from rstscope.geo import GeoDB
    from rstscope.offline import Analyzer, Options, Progress, with_window
    from rstscope.outputs import MissingExtra, Writer, record_writer, rollup_writer
    from rstscope.report import stage_table

    try:
        topo = with_window(config.load(args.topology), idle=args.idle, timeout=args.timeout, grace=args.grace)
    except config.TopologyError as e:
        print(f"rstscope: {e}", file=sys.stderr)
        return 2
    for f in args.files:
        if not f.is_file():
            print(f"rstscope: {f}: no such file", file=sys.stderr)
            return 2
    opts = Options(csv_values(args.server_ip), _ports(args.server_port), args.sample,
                   args.sample_mode or topo.sampling.mode, topo.sampling.hash_key, engine=args.engine)
    geo = GeoDB.open(args.geo) if args.geo else GeoDB.empty()
    with contextlib.ExitStack() as stack:
        try:
            # Both files are opened first: a missing extra (pyarrow) is reported before a long run.
            out: Writer | None = stack.enter_context(record_writer(args.out)) if args.out else None
            rollups: Writer | None = stack.enter_context(rollup_writer(args.rollups)) if args.rollups else None
        except MissingExtra as e:
            print(f"rstscope: {e}", file=sys.stderr)
            return 2
        analyzer = Analyzer(topo, opts, geo, out.write if out is not None else None)
        total = sum(f.stat().st_size for f in args.files)
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        try:
            summary = analyzer.run(args.files, Progress(total, show)).to_dict()
        except CaptureError as e:
            print(f"rstscope: {e}", file=sys.stderr)
            return 2
        if rollups is not None:
            for row in analyzer.rollup.rows():
                rollups.write(row)
    for st in analyzer.files:
        if st.stopped_at is not None:
            print(f"rstscope: {st.path}: stopped at byte {st.stopped_at}: "
                  f"{', '.join(sorted(st.errors))}", file=sys.stderr)
    if args.format == "json":
        import orjson

        sys.stdout.buffer.write(orjson.dumps(summary, option=orjson.OPT_APPEND_NEWLINE))
    else:
        print(stage_table(summary))
    return 0


# Sub-commands that own their argument parsing: name -> (module with main(argv) -> int, help).
DELEGATED = {
    "geo": ("rstscope.geo", "geolocation data: fetch, lookup"),
    "local-kafka": ("rstscope.kafka.local", "start or stop a local Apache Kafka cluster"),
    "topics": ("rstscope.streams.topics", "create or check the topics of topology.yaml"),
    "edge": ("rstscope.edge.producer", "edge producer: capture -> sampling -> Kafka"),
    "worker": ("rstscope.streams.worker", "Faust worker: connection and rollup agents"),
    "alert-agent": ("rstscope.streams.alert_agent", "rollups topic -> change alerts -> alerts topic"),
    "quic": ("rstscope.quic.cli", "classify the QUIC connections of capture files (offline)"),
}
# Sub-commands whose module is handed the name too (one module serves several commands).
NAMED = {
    "serve": ("rstscope.api.cli", "Radar-compatible API and dashboard over the rollup store"),
    "sink": ("rstscope.api.cli", "consume the rollups (and alerts) topics into the store"),
    "alerts": ("rstscope.insights.cli", "change alerts over a rollups file (docs/insights.md)"),
    "outliers": ("rstscope.insights.cli", "networks that stand out from their peers over a rollups file"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rstscope", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rstscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_analyze(sub)
    for name, (_module, help_text) in (DELEGATED | NAMED).items():
        sub.add_parser(name, help=help_text, add_help=False)
    if argv and (argv[0] in DELEGATED or argv[0] in NAMED):
        import importlib

        named = argv[0] in NAMED
        module = importlib.import_module((NAMED if named else DELEGATED)[argv[0]][0])
        code: int = module.main(argv if named else argv[1:])
        return code
    args = parser.parse_args(argv)
    if args.command == "analyze":
        from rstscope.config import TopologyError

        try:
            return run_analyze(args)
        except (TopologyError, ValueError, OSError) as e:
            print(f"rstscope: {e}", file=sys.stderr)
            return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
