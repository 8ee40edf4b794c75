"""Profile `rstscope analyze` on a capture: cProfile (or pyinstrument if installed) of one engine.

Usage: python bench/profile_analyze.py CAPTURE [--engine batch|packet] [--sample 1] [--top 25] [--slice-frames N]
Prints the engine that decided, the wall time, the peak RSS and the functions with the most own time
(the batch engine in slices of N frames: its default, or RSTSCOPE_SLICE_FRAMES).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
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
    ap.add_argument("--slice-frames", type=int, default=None, help="frames per slice of the batch engine")
    args = ap.parse_args()
    if args.slice_frames:
        os.environ["RSTSCOPE_SLICE_FRAMES"] = str(args.slice_frames)
    topo = config.load()
    an = Analyzer(topo, Options(probability=args.sample, sample_mode="hash", sample_key="bench", engine=args.engine))
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    an.run([args.capture])
    prof.disable()
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"engine used: {an.engine_used}; {wall:.2f} s under the profiler; peak RSS {peak:.0f} MiB; "
          f"{an.summary.connections:,} connections")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(args.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
