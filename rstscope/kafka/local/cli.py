"""``rstscope local-kafka`` / ``python -m rstscope.kafka.local``: start, stop, status, fetch.

The brokers outlive the CLI process (no ``die_with_parent``): ``stop`` finds them again through the
cluster directory's pid files.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from rstscope.kafka.local.cluster import DEFAULT_HEAP, Cluster, default_dir
from rstscope.kafka.local.errors import LocalKafkaError, log
from rstscope.kafka.local.jars import KAFKA_VERSION, ensure_libs
from rstscope.kafka.local.lifecycle import start, stop
from rstscope.kafka.local.processes import running_nodes


def main(argv: list[str] | None = None) -> int:
    """Parse the CLI's arguments and run one command; returns the exit status (1: a reported error)."""
    ap = argparse.ArgumentParser(prog="rstscope local-kafka",
                                 description="Run a local Apache Kafka cluster (KRaft, 127.0.0.1 only).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start", help="start a fresh cluster; prints bootstrap servers when ready")
    p_start.add_argument("--brokers", type=int, choices=(1, 3), default=1)
    p_start.add_argument("--dir", type=Path, default=None,
                         help=f"cluster directory (default $RSTSCOPE_KAFKA_DIR or {default_dir()})")
    p_start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    p_start.add_argument("--heap", default=None, help=f"JVM max heap per node (default {DEFAULT_HEAP})")
    p_start.add_argument("--version", default=KAFKA_VERSION, help=argparse.SUPPRESS)
    p_start.add_argument("--scram-user", default=None, metavar="NAME",
                         help="also listen with TLS + SASL/SCRAM; the user's password is read from "
                              "$RSTSCOPE_KAFKA_SCRAM_PASSWORD or generated into DIR/tls/NAME.password")
    p_stop = sub.add_parser("stop", help="stop the cluster (SIGTERM, then SIGKILL)")
    p_stop.add_argument("--dir", type=Path, default=None)
    p_stop.add_argument("--timeout", type=float, default=20.0)
    p_status = sub.add_parser("status", help="print bootstrap servers and running nodes")
    p_status.add_argument("--dir", type=Path, default=None)
    sub.add_parser("fetch", help="only resolve the broker jars into the cache")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "start":
            users = None
            if args.scram_user:
                import secrets

                users = {args.scram_user: os.environ.get("RSTSCOPE_KAFKA_SCRAM_PASSWORD") or secrets.token_hex(16)}
            d = Path(args.dir if args.dir is not None else default_dir()).absolute()
            print(start(args.brokers, d, version=args.version, heap=args.heap, timeout=args.timeout,
                        scram_users=users), flush=True)
            if users:
                pw_file = d / "tls" / f"{args.scram_user}.password"
                pw_file.write_text(users[args.scram_user] + "\n")
                os.chmod(pw_file, 0o600)
                log(f"password of {args.scram_user}: {pw_file}")
        elif args.cmd == "stop":
            stop(args.dir, timeout=args.timeout)
        elif args.cmd == "status":
            d = Path(args.dir if args.dir is not None else default_dir())
            c = Cluster.load(d)
            alive = running_nodes(d)
            print(c.bootstrap)
            print(f"running nodes: {alive} of {[n.node_id for n in c.nodes]}", file=sys.stderr)
            return 0 if alive else 3
        elif args.cmd == "fetch":
            print(ensure_libs())
    except LocalKafkaError as e:
        print(f"local-kafka: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno == errno.ENOENT:
            print(f"local-kafka: error: {e}", file=sys.stderr)
            return 1
        raise
    return 0
