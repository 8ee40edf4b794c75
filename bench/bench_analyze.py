"""`rstscope analyze` (batch and packet engines, --sample 1 and 0.0001) against `tcpdump -r`, `tshark -r`,
`argus -r` and nfstream (if installed: `pip install nfstream`) on the same capture, side by side in one run.
The `rstscope/tool` column is the tool's packets/s relative to `rstscope batch --sample 1`.

Usage: python bench/bench_analyze.py CAPTURE [--runs 3] [--no-packet] [--no-tshark] [--baseline TREE]
Runs each command in turn (interleaved, so machine noise hits all alike), `--runs` rounds, and prints
medians of wall time, packets/s, the ratio to tcpdump, and the peak RSS of each child (wait4). The
packet engine is the per-packet reference path (what the streaming workers run); batch is the
default. The tools that are not installed are skipped. Build a capture with bench/make_capture.sh.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def count_packets(path: Path) -> int:
    sys.path.insert(0, str(REPO))
    from rstscope.capture.files import read_frames

    return sum(1 for _ in read_frames(path))


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return wall, usage.ru_maxrss


NFSTREAM = """
import sys
from nfstream import NFStreamer
flows = NFStreamer(source=sys.argv[1], n_dissections=0, statistical_analysis=False, splt_analysis=0)
print(sum(1 for _ in flows))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-packet", action="store_true", help="skip the (slow) per-packet engine")
    ap.add_argument("--no-tshark", action="store_true", help="skip tshark (slow)")
    ap.add_argument("--baseline", type=Path, default=None, metavar="TREE",
                    help="also run the rstscope of another checkout (e.g. `git worktree add /tmp/old main~1`)")
    args = ap.parse_args()
    cap = str(args.capture.resolve())
    n = count_packets(args.capture)
    tmp = Path(tempfile.mkdtemp(prefix="rsbench-"))

    def rstscope(engine: str, sample: str) -> list[str]:
        return [sys.executable, "-m", "rstscope.cli", "analyze", cap, "--sample", sample, "--no-progress",
                "--engine", engine, "--format", "json"]

    tools: dict[str, list[str]] = {
        "rstscope batch --sample 1": rstscope("batch", "1"),
        "rstscope batch --sample 0.0001": rstscope("batch", "0.0001"),
    }
    if args.baseline is not None:
        # run from the baseline tree: the working directory comes first on sys.path, before PYTHONPATH
        tools["rstscope batch --sample 1 (baseline)"] = ["sh", "-c", 'cd "$0" && exec "$@"',
                                                         str(args.baseline.resolve()), *rstscope("batch", "1")]
    if not args.no_packet:
        tools["rstscope packet --sample 1"] = rstscope("packet", "1")
        tools["rstscope packet --sample 0.0001"] = rstscope("packet", "0.0001")
    if shutil.which("tcpdump"):
        tools["tcpdump -nn -r"] = ["tcpdump", "-nn", "-r", cap]
    if shutil.which("argus"):
        tools["argus -r -w"] = ["argus", "-r", cap, "-w", str(tmp / "out.argus")]
    if shutil.which("tshark") and not args.no_tshark:
        tools["tshark -n -r"] = ["tshark", "-n", "-r", cap]
    try:
        import nfstream  # noqa: F401
    except ImportError:
        pass
    else:  # tuned as its docs suggest for raw speed: no DPI, no statistics, no packet-level features
        tools["nfstream (no DPI)"] = [sys.executable, "-c", NFSTREAM, cap]
    walls: dict[str, list[float]] = {k: [] for k in tools}
    rss: dict[str, int] = {}
    try:
        for _ in range(args.runs):
            for name, cmd in tools.items():
                w, m = timed(cmd)
                walls[name].append(w)
                rss[name] = max(rss.get(name, 0), m)
                (tmp / "out.argus").unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref = "tcpdump -nn -r" if "tcpdump -nn -r" in tools else next(iter(tools))
    ref_med = statistics.median(walls[ref])
    print(f"capture: {args.capture} ({n:,} packets), {args.runs} runs, medians; {os.cpu_count()} CPUs")
    ours = statistics.median(walls["rstscope batch --sample 1"])
    print(f"{'command':<34} {'seconds':>8} {'packets/s':>12} {'vs ' + ref:>20} {'rstscope/tool':>14} "
          f"{'peak RSS MiB':>13}")
    for name in tools:
        med = statistics.median(walls[name])
        print(f"{name:<34} {med:>8.2f} {n / med:>12,.0f} {ref_med / med:>19.2f}x {med / ours:>13.2f}x "
              f"{rss[name] / 1024:>13.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
