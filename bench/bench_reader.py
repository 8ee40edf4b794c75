"""File framing only: rstscope's reader against dpkt's pcap reader on the same file (one run, medians).

Usage: python bench/bench_reader.py CAPTURE.pcap [--runs 3]
This is the measurement behind writing our own framing (rstscope/capture/files.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def ours(path: Path) -> int:
    from rstscope.capture.files import read_frames

    return sum(1 for _ in read_frames(path))


def dpkt_reader(path: Path) -> int:
    import dpkt

    with path.open("rb") as f:
        return sum(1 for _ in dpkt.pcap.Reader(f))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("capture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    readers: dict[str, Callable[[Path], int]] = {"rstscope": ours, "dpkt.pcap.Reader": dpkt_reader}
    times: dict[str, list[float]] = {k: [] for k in readers}
    n = 0
    for _ in range(args.runs):
        for name, fn in readers.items():
            t = time.perf_counter()
            n = fn(args.capture)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["rstscope"])
    print(f"{'reader':<18} {'seconds':>8} {'frames/s':>12} {'time vs rstscope':>17}")
    for name in readers:
        med = statistics.median(times[name])
        print(f"{name:<18} {med:>8.2f} {n / med:>12,.0f} {med / base:>16.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
