"""Profile `rstscope analyze` on a capture: cProfile (or pyinstrument if installed) of one engine.

Usage: python bench/profile_analyze.py CAPTURE [--engine batch|packet] [--sample 1] [--top 25]
Prints the engine that decided, the wall time and the functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rstscope import config  # noqa: E402
from rstscope.offline import Analyzer, Options  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("capture", type=Path)
    ap.add_argument("--engine", choices=("batch", "packet"), default="batch")
    ap.add_argument("--sample", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="tottime")
    args = ap.parse_args()
    topo = config.load()
    an = Analyzer(topo, Options(probability=args.sample, sample_mode="hash", sample_key="bench", engine=args.engine))
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    an.run([args.capture])
    prof.disable()
    wall = time.perf_counter() - t
    print(f"engine used: {an.engine_used}; {wall:.2f} s under the profiler; "
          f"{an.summary.connections:,} connections")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
