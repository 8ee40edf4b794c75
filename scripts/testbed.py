#!/usr/bin/env python3
"""Run rstscope's tampering test bed (issue 6) and print its per-signature report.

    sudo python3 scripts/testbed.py --out /tmp/rstscope-bed [--guard 90]

Builds three network namespaces (client <-> router <-> server, offloads off), nginx on 80 and TLS on
443 (self-signed certificate made at run time), an NFQUEUE middlebox on the router that drops and /
or injects RSTs toward the server in every style of Sundara Raman et al. (SIGCOMM 2023) and as the
named middleboxes of docs/signatures.md (the GFW's type-1 and type-2 injectors), captures on
the server's interface (and `tcpdump -i any`), labels every connection it makes, runs
`rstscope analyze`, joins records to labels and writes OUT/{bed.pcap, bed_any.pcap, labels.jsonl,
bed.connections.jsonl, bed_any.connections.jsonl, middlebox.log, report.json, report.md}.
The code is tests/testbed/bed.py and tests/testbed/middlebox.py; docs/signatures.md explains it.
Exit status 0 only if every label matched rstscope's record in both captures.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_bed():
    spec = importlib.util.spec_from_file_location("rstscope_testbed_bed", ROOT / "tests" / "testbed" / "bed.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("testbed-out"))
    ap.add_argument("--guard", type=float, default=90.0,
                    help="seconds the capture keeps away from a 15-minute window boundary (default 90)")
    ap.add_argument("--workers", type=int, default=12, help="scenarios run in parallel")
    args = ap.parse_args()
    bed = load_bed()
    try:
        rep = bed.run(args.out, guard=args.guard, workers=args.workers)
    except (PermissionError, FileNotFoundError) as e:
        print(f"testbed: {e}", file=sys.stderr)
        return 2
    print((args.out / "report.md").read_text())
    bad = sum(len(c["mismatches"]) + c["unlabelled_records"] for c in rep["results"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
