"""`rstscope analyze --sample 1` against `tcpdump -r` on the same capture, side by side in one run.

Usage: python bench/bench_analyze.py CAPTURE [--runs 3] [--sample 1]
Runs each command in turn, `--runs` rounds, and prints medians of wall time, packets/s, peak RSS and
the ratio to tcpdump. Build a capture with bench/make_capture.sh (nginx + ab in namespaces).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def count_packets(path: Path) -> int:
    from rstscope.capture.files import read_frames

    return sum(1 for _ in read_frames(path))


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(after, before)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("capture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sample", default="1")
    args = ap.parse_args()
    n = count_packets(args.capture)
    tools = {
        "rstscope analyze": [sys.executable, "-m", "rstscope.cli", "analyze", str(args.capture),
                             "--sample", args.sample, "--no-progress"],
    }
    if shutil.which("tcpdump"):
        tools["tcpdump -r"] = ["tcpdump", "-nn", "-r", str(args.capture)]
    walls: dict[str, list[float]] = {k: [] for k in tools}
    rss: dict[str, int] = {}
    for _ in range(args.runs):
        for name, cmd in tools.items():  # interleaved, so machine noise hits both alike
            w, m = timed(cmd)
            walls[name].append(w)
            rss[name] = max(rss.get(name, 0), m)
    ours = statistics.median(walls["rstscope analyze"])
    print(f"capture: {args.capture} ({n:,} packets), {args.runs} runs, medians")
    print(f"{'tool':<20} {'seconds':>8} {'packets/s':>12} {'speed vs rstscope':>18}")
    for name in tools:
        med = statistics.median(walls[name])
        print(f"{name:<20} {med:>8.2f} {n / med:>12,.0f} {ours / med:>17.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
