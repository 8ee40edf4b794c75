"""`rstscope worker`: run the Faust worker (connection and rollup agents).

Before anything starts, the broker's topics are compared with topology.yaml: a worker that joined
with other partition counts would route connections or rollup rows to the wrong state, so it refuses.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from rstscope.config import TopologyError, load
from rstscope.gc_policy import for_long_runs
from rstscope.streams.topics import DEFAULT_APP_ID, all_specs, default_bootstrap, inspect


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rstscope worker", description=__doc__)
    p.add_argument("--bootstrap", default=None, help="bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topology", type=Path, default=None, help="topology.yaml to use")
    p.add_argument("--app-id", default=DEFAULT_APP_ID, help="Faust app id = consumer group (default rstscope)")
    p.add_argument("--workers-dir", type=Path, default=Path("rstscope-workers"),
                   help="parent of this worker's data directory")
    p.add_argument("--geo", type=Path, default=None, metavar="DIR", help="directory with .mmdb files")
    p.add_argument("--session-timeout", type=float, default=10.0, metavar="S",
                   help="consumer group session timeout (a dead worker's partitions move after this)")
    p.add_argument("--commit-interval", type=float, default=2.8, metavar="S",
                   help="how often acked offsets are committed (Faust broker_commit_interval)")
    p.add_argument("--loglevel", default="info")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="event loop (uvloop: less per-message overhead; asyncio if uvloop is not installed)")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off; 0: any free port, "
                        "printed on stderr); docs/metrics.md")
    p.add_argument("--metrics-host", "--metrics-addr", dest="metrics_host", default="127.0.0.1", metavar="HOST",
                   help="address of the metrics endpoint (default 127.0.0.1: this host only; 0.0.0.0 to let a "
                        "remote Prometheus scrape)")
    args = p.parse_args(argv)
    from rstscope.kafka import security

    try:
        sec = security.load()
    except security.SecurityConfigError as e:
        print(f"rstscope worker: {e}", file=sys.stderr)
        return 2
    bootstrap = args.bootstrap or default_bootstrap()
    try:
        topo = load(args.topology)
        problems = inspect(bootstrap, all_specs(topo, args.app_id))
    except TopologyError as e:
        print(f"rstscope worker: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(f"rstscope worker: {bootstrap}: {sec.redact(str(e))}", file=sys.stderr)
        return 2
    fatal = [x for x in problems if not x.fixable or x.what == "missing"]
    for x in problems:
        print(f"rstscope worker: {'REFUSING: ' if x in fatal else 'warning: '}{x}", file=sys.stderr)
    if fatal:
        print(f"rstscope worker: topics do not match {topo.source}; fix them (`rstscope topics apply "
              f"--app-id {args.app_id}` creates missing ones) and start again", file=sys.stderr)
        return 2

    import aiokafka.codec

    if not (aiokafka.codec.has_lz4() and aiokafka.codec.has_zstd()):
        # the edge compresses with lz4 (or zstd); aiokafka then crashes in its fetcher on the first batch
        print("rstscope worker: aiokafka cannot decompress lz4/zstd batches: install cramjam "
              "(pip install 'aiokafka[lz4,zstd]')", file=sys.stderr)
        return 2

    metrics_sock = None
    if args.metrics_port is not None:
        from rstscope.streams.metrics import bind

        try:  # before Faust starts: a taken port stops the worker now, with a clear message
            metrics_sock = bind(args.metrics_host, args.metrics_port)
        except OSError as e:
            print(f"rstscope worker: metrics endpoint {args.metrics_host}:{args.metrics_port}: {e}", file=sys.stderr)
            return 2

    if args.loop == "uvloop":
        try:
            import asyncio

            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            print("rstscope worker: uvloop is not installed, using asyncio's loop", file=sys.stderr)

    from faust.worker import Worker

    from rstscope.geo import GeoDB
    from rstscope.streams.app import Settings, make_app

    datadir = args.workers_dir / f"{args.app_id}-{socket.gethostname()}-{os.getpid()}"
    datadir.mkdir(parents=True, exist_ok=True)
    geo = GeoDB.open(args.geo) if args.geo else GeoDB.empty()
    pipe = make_app(Settings(bootstrap, topo, args.app_id, datadir, geo, args.session_timeout,
                              {"broker_commit_interval": args.commit_interval}, sec))
    if sec.protocol != "PLAINTEXT":
        print(f"rstscope worker: kafka {sec.describe()}", file=sys.stderr)
    services = []
    if metrics_sock is not None:
        from rstscope.streams.metrics import MetricsServer, StageCollector, make_registry, owned_partitions
        from rstscope.streams.topics import internal_specs, role_spec

        owned = owned_partitions(pipe.app, {"connections": role_spec(topo, "packets").name,
                                            "rollup": internal_specs(topo, args.app_id)["rollup_input"].name})
        services.append(MetricsServer(make_registry(StageCollector(pipe.connections, pipe.rollups, owned)),
                                      metrics_sock))
        host, port = metrics_sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        print(f"rstscope worker: metrics on http://{host}:{port}/metrics", file=sys.stderr, flush=True)

    class RstscopeWorker(Worker):
        def _setup_logging(self) -> None:
            super()._setup_logging()
            # mode leaves the root logger at DEBUG: aiokafka and Faust then build a debug record per
            # message sent (measured: ~8% of a worker's time) only to drop it
            logging.getLogger().setLevel(args.loglevel.upper())

    worker = RstscopeWorker(pipe.app, *services, loglevel=args.loglevel, quiet=True)
    for_long_runs()
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
