"""`rstscope serve` (HTTP API + dashboard) and `rstscope sink` (rollups and alerts topics -> store)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

DEFAULT_DB = None  # in memory unless --db


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve the Radar-compatible API and the dashboard (read-only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--db", type=Path, default=None, help="DuckDB file (default: in memory)")
    p.add_argument("--rollups", type=Path, nargs="+", default=[], metavar="FILE",
                   help="rollup JSON lines (rstscope analyze --rollups) to load at start")
    p.add_argument("--alerts", type=Path, nargs="+", default=[], metavar="FILE",
                   help="alert JSON lines (rstscope alerts --out) to load at start")
    p.add_argument("--connections", type=Path, nargs="+", default=[], metavar="FILE",
                   help="connection JSON lines (rstscope analyze --out) for --expose-connections")
    p.add_argument("--topology", type=Path, default=None,
                   help="topology file for the outliers: thresholds (default: $RSTSCOPE_TOPOLOGY or the packaged one)")
    p.add_argument("--expose-connections", action="store_true",
                   help="serve /rstscope/connections (client addresses of one ASN): off by default")


def _sink_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sink", help="consume the rollups (and alerts) topics into a DuckDB store")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--db", type=Path, required=True, help="DuckDB file to fill")
    p.add_argument("--topic", default=None, help="rollups topic (default: topology.yaml topics.rollups)")
    p.add_argument("--alerts-topic", default=None,
                   help="alerts topic (default: topology.yaml topics.alerts; none there: alerts are not consumed)")
    p.add_argument("--group", default=None, help="consumer group id (default rstscope-api-sink)")
    p.add_argument("--topology", type=Path, default=None)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from rstscope import config
    from rstscope.api.app import create_app
    from rstscope.api.store import BadRow, Store

    for f in [*args.rollups, *args.alerts, *args.connections]:
        if not f.is_file():
            print(f"rstscope: {f}: no such file", file=sys.stderr)
            return 2
    if args.connections and not args.expose_connections:
        print("rstscope: --connections needs --expose-connections", file=sys.stderr)
        return 2
    try:
        outliers = config.load(args.topology).outliers
    except config.TopologyError as e:
        print(f"rstscope: {e}", file=sys.stderr)
        return 2
    loading = bool(args.rollups or args.alerts or args.connections)
    if args.db is not None and not loading:
        Store(args.db, hold=False).close()  # create the file and its tables if the sink has not yet
    # Without files to load, a --db file is opened per request so that a running sink can keep writing it.
    store = Store(args.db, read_only=args.db is not None and not loading, hold=loading or args.db is None)
    try:
        for f in args.rollups:
            n = store.load_rollups(f)
            print(f"rstscope: {f}: {n} rollup rows", file=sys.stderr)
        for f in args.alerts:
            n = store.load_alerts(f)
            print(f"rstscope: {f}: {n} alerts", file=sys.stderr)
        for f in args.connections:
            n = store.load_connections(f)
            print(f"rstscope: {f}: {n} connections", file=sys.stderr)
    except (BadRow, OSError) as e:
        print(f"rstscope: {e}", file=sys.stderr)
        return 2
    app = create_app(store, expose_connections=args.expose_connections, outliers=outliers)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"rstscope: serving on {args.host}: reachable from other hosts", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def sink(args: argparse.Namespace) -> int:
    from rstscope import config
    from rstscope.api import sink as sk
    from rstscope.api.store import Store
    from rstscope.kafka.roles import default_bootstrap, role_spec

    topology = config.load(args.topology)
    topic = args.topic or role_spec(topology, "rollups").name
    alerts_spec = topology.topics.get("alerts")
    alerts_topic = args.alerts_topic or (alerts_spec.name if alerts_spec is not None else None)
    store = Store(args.db, hold=False)  # the file lock is held only while writing a batch
    stop = threading.Event()
    sk.install_stop_handlers(stop)
    from rstscope.kafka.security import SecurityConfigError

    try:
        consumer = sk.make_consumer(args.bootstrap or default_bootstrap(), args.group or sk.GROUP_ID)
    except SecurityConfigError as e:
        print(f"rstscope sink: {e}", file=sys.stderr)
        return 2
    stats = sk.run(consumer, store, topic, stop=stop, alerts_topic=alerts_topic)
    print(f"rstscope: sink stopped: {stats.upserted} rows upserted, {stats.deleted} deleted, "
          f"{stats.bad} bad; {stats.alerts_upserted} alerts upserted, {stats.alerts_deleted} deleted, "
          f"{stats.bad_alerts} bad", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    """Entry for `rstscope serve ...` and `rstscope sink ...` (argv includes the sub-command)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="rstscope")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _sink_parser(sub)
    args = parser.parse_args(argv)
    return serve(args) if args.command == "serve" else sink(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
