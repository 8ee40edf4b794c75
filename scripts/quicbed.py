#!/usr/bin/env python3
"""Run rstscope's QUIC test bed (issue 17): real QUIC captures and their labels.

    sudo python3 scripts/quicbed.py --out /tmp/rstscope-quicbed [--conns 3] [--tail 12] [--guard 15]

Builds three network namespaces (qb-cli <-> qb-rtr <-> qb-srv, offloads off), an aioquic echo server on
UDP 443 of an allowed and a blocklisted address (IPv4 and IPv6; self-signed certificate made at run
time), an NFQUEUE middlebox on the router that decrypts client Initials (RFC 9001) to read the SNI and
drops flows the way censors do, runs every scenario's aioquic clients from their own client address,
captures on the server's interface and writes OUT/{quicbed.pcap, labels.jsonl, middlebox.json,
middlebox.flows.json, middlebox.log, report.json}. The code is tests/quicbed/; docs/quic-bed.md explains it.
Exit status 0 only if every connection the bed meant to complete did.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("quicbed-out"))
    ap.add_argument("--conns", type=int, default=3, help="treated connections per scenario (plus one control)")
    ap.add_argument("--tail", type=int, default=12,
                    help="ordinary completed connections after the scenarios, 1 s apart")
    ap.add_argument("--guard", type=float, default=15.0,
                    help="seconds the capture keeps away from a 15-minute window boundary (default 15)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    bed = importlib.import_module("tests.quicbed.bed")
    try:
        rep = bed.run(args.out, conns=args.conns, tail=args.tail, guard=args.guard)
    except (PermissionError, FileNotFoundError) as e:
        print(f"quicbed: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in rep.items() if k != "failed"}, indent=1))
    for x in rep["failed"]:
        print(f"FAILED: {json.dumps(x)}", file=sys.stderr)
    return 1 if rep["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
