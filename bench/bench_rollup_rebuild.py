"""Benchmark a worker taking a rollup-input partition over: ``RollupStage.rollup`` rebuilds the partition's
rows from its ``rollup-records`` table (what Faust restored from the changelog) before the agent resumes.

A week of retained buckets on a busy partition is millions of connections, so this is time the
partition's rows are not updated after every rebalance or restart.

    python bench/bench_rollup_rebuild.py [--connections 500000] [--runs 5]
    PYTHONPATH=<other tree> python bench/bench_rollup_rebuild.py   # the same on another tree, to compare
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: a tree named there is measured

from rstscope.codecs.jsonl import dumps
from rstscope.core.classify import STAGES
from rstscope.streams.connection_agent import BATCH_RECORDS
from rstscope.streams.rollup_agent import RollupStage

BUCKET_S = 900


def records(n: int, seed: int = 1) -> list[dict[str, object]]:
    """n connection records over a week of buckets, 60 countries, 2,000 networks, every stage."""
    rnd = random.Random(seed)
    t0 = 1_700_000_000 // BUCKET_S * BUCKET_S
    out = []
    for i in range(n):
        asn = rnd.randrange(64_500, 66_500)
        stage = rnd.choice(STAGES)
        out.append({"id": f"{i:016x}", "window_start": t0 + rnd.randrange(7 * 96) * BUCKET_S,
                    "country": f"C{asn % 60:02d}"[-2:], "asn": asn, "stage": stage,
                    "tags": ["rst"] if rnd.random() < 0.3 else [], "signature": None,
                    "as_name": f"AS{asn}", "last_ts": float(t0 + i)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    try:  # as the worker runs (a tree from before rstscope.gc_policy: Python's defaults)
        from rstscope.gc_policy import for_long_runs
    except ImportError:
        print("(no rstscope.gc_policy in this tree: the collector's defaults)")
    else:
        for_long_runs()
    recs = records(args.connections)
    table: dict[str, bytes] = {}
    first = RollupStage(BUCKET_S)
    for off, i in enumerate(range(0, len(recs), BATCH_RECORDS)):  # the table as the agent wrote it
        first.add_batch(0, b"[" + b",".join(dumps(r) for r in recs[i:i + BATCH_RECORDS]) + b"]", table, off)
    times = []
    for _ in range(args.runs):
        stage = RollupStage(BUCKET_S)
        t = time.perf_counter()
        stage.rollup(0, table)
        times.append(time.perf_counter() - t)
        assert len(stage.rollups[0].cells) == len(first.rollups[0].cells)
    med = statistics.median(times)
    print(f"rollup rebuild: {args.connections:,} connections in {len(table):,} table entries, "
          f"{len(first.rollups[0].cells):,} rows: median {med:.3f} s of {args.runs} "
          f"({args.connections / med:,.0f} connections/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
