"""`rstscope analyze` (batch and packet engines, --sample 1 and 0.0001) against `tcpdump -r`, `tshark -r`,
`argus -r` and nfstream (if installed: `pip install nfstream`) on the same capture, side by side in one run.
The `rstscope/tool` column is the tool's packets/s relative to `rstscope batch --sample 1`.

Usage: python bench/bench_analyze.py CAPTURE [--runs 3] [--no-packet] [--no-tshark] [--baseline TREE]
       python bench/bench_analyze.py CAPTURE --copies 1,2,4,8 [--runs 1]   (peak RSS against input size)
Runs each command in turn (interleaved, so machine noise hits all alike), `--runs` rounds, and prints
medians of wall time, packets/s, the ratio to tcpdump, and the peak RSS of each child (wait4). The
packet engine is the per-packet reference path (what the streaming workers run); batch is the
default. The tools that are not installed are skipped. Build a capture with bench/make_capture.sh.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def count_packets(path: Path) -> int:
    """Frames of the capture, counted in a child: this process stays small, because a child started
    by vfork (subprocess does) inherits its parent's peak RSS in ``ru_maxrss`` (wait4)."""
    code = "import sys; from rstscope.capture.files import read_frames; print(sum(1 for _ in read_frames(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, cwd=REPO)
    return int(out.stdout)


def concatenate(path: Path, copies: int, out: Path) -> Path:
    """A classic pcap of ``copies`` copies of ``path``, copy k shifted by k * SHIFT_S seconds (each in
    windows of its own), written in blocks: the input for showing that memory does not grow with it."""
    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    rec = struct.Struct(endian + "I")
    starts = []  # record offsets (their ts_sec fields)
    pos = 24
    while pos + 16 <= len(data):
        starts.append(pos)
        pos += 16 + rec.unpack_from(data, pos + 8)[0]
    body = bytearray(data[24:pos])
    with out.open("wb") as fh:
        fh.write(data[:24])
        for k in range(copies):
            shifted = bytearray(body)
            for o in starts:
                rec.pack_into(shifted, o - 24, rec.unpack_from(body, o - 24)[0] + k * SHIFT_S)
            fh.write(shifted)
    return out


SHIFT_S = 3600  # a copy per hour: its 15-minute windows are its own


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


def copies_table(capture: Path, counts: list[int], runs: int) -> int:
    """Seconds and peak RSS of rstscope (batch, --sample 1) and argus on 1..N copies of the capture."""
    tmp = Path(tempfile.mkdtemp(prefix="rsbench-"))
    try:
        print(f"{'copies':>6} {'packets':>12} {'rstscope s':>11} {'packets/s':>11} {'RSS MiB':>8} "
              f"{'argus s':>8} {'RSS MiB':>8}")
        for k in counts:
            path = tmp / f"x{k}.pcap"
            # in a child: this process stays small (see count_packets)
            subprocess.run([sys.executable, __file__, str(capture), "--write-copies", str(k), str(path)], check=True)
            n = count_packets(path)
            cmds = {"rstscope": [sys.executable, "-m", "rstscope.cli", "analyze", str(path), "--sample", "1",
                                 "--no-progress", "--format", "json"]}
            if shutil.which("argus"):
                cmds["argus"] = ["argus", "-r", str(path), "-w", str(tmp / "out.argus")]
            res: dict[str, tuple[float, int]] = {}
            walls: dict[str, list[float]] = {name: [] for name in cmds}
            peak: dict[str, int] = {}
            for _ in range(runs):
                for name, cmd in cmds.items():
                    w, m = timed(cmd)
                    walls[name].append(w)
                    peak[name] = max(peak.get(name, 0), m)
                    (tmp / "out.argus").unlink(missing_ok=True)
            for name in cmds:
                res[name] = (statistics.median(walls[name]), peak[name])
            ours = res["rstscope"]
            theirs = res.get("argus", (float("nan"), 0))
            print(f"{k:>6} {n:>12,} {ours[0]:>11.2f} {n / ours[0]:>11,.0f} {ours[1] / 1024:>8.0f} "
                  f"{theirs[0]:>8.2f} {theirs[1] / 1024:>8.0f}")
            path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def compiled(tree: Path) -> None:
    """Write the bytecode of a tree's rstscope, as pip does on install, so that no timed run compiles
    sources: where PYTHONDONTWRITEBYTECODE is set (some shells and images), every run would otherwise
    compile the whole package, ~0.15 s of a ~1.4 s run."""
    compileall.compile_dir(str(tree / "rstscope"), quiet=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-packet", action="store_true", help="skip the (slow) per-packet engine")
    ap.add_argument("--no-tshark", action="store_true", help="skip tshark (slow)")
    ap.add_argument("--baseline", type=Path, default=None, metavar="TREE",
                    help="also run the rstscope of another checkout (e.g. `git worktree add /tmp/old main~1`)")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="also write the medians as JSON: {command: {seconds, pps, rss_mib}} (bench_all.py)")
    ap.add_argument("--copies", default=None, metavar="N,N,...",
                    help="memory against input size: rstscope batch and argus on the capture repeated N times "
                         "(copy k shifted by k hours), e.g. 1,2,4,8")
    ap.add_argument("--write-copies", nargs=2, metavar=("N", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    compiled(Path(__file__).resolve().parents[1])
    if args.baseline is not None:
        compiled(args.baseline.resolve())
    if args.write_copies:
        concatenate(args.capture, int(args.write_copies[0]), Path(args.write_copies[1]))
        return 0
    if args.copies:
        return copies_table(args.capture, [int(x) for x in args.copies.split(",")], args.runs)
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
    # found, not imported: this process stays small (see count_packets)
    if importlib.util.find_spec("nfstream") is not None:
        # tuned as its docs suggest for raw speed: no DPI, no statistics, no packet-level features
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
    if args.json is not None:
        import json

        args.json.write_text(json.dumps({name: {"seconds": statistics.median(walls[name]),
                                                "pps": n / statistics.median(walls[name]),
                                                "rss_mib": rss[name] / 1024} for name in tools}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
