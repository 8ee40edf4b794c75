"""The edge's loop without Kafka: read, decode, gate, batch, encode; the producer discards.

    python bench/bench_edge_loop.py [--connections 25000] [--runs 5] [--pcap FILE] [--profile FILE] [--frames]

Times ``Edge(<discarding producer>, ...).run([pcap])`` on bench_pipeline.py's synthetic capture (or
``--pcap``) and prints each run's records/s and the median; ``--frames`` also times the columns a
512-frame batch at a time (as a live source's batches go) and frame by frame (the reference) in
alternate runs, and checks that all three send the same messages. It times
the tree it is run from (``REPO`` below): to compare two commits, run it from both worktrees
alternately and compare medians (the machine's load moves between runs; interleaving spreads it over
both). ``--profile FILE`` writes a cProfile of one more run (``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_pipeline import gate, synth_pcap  # noqa: E402

from rstscope import config  # noqa: E402
from rstscope.edge.producer import Edge  # noqa: E402
from rstscope.edge.sources import PcapFiles  # noqa: E402


class Discard:
    """What ``Edge`` needs of a producer; keeps nothing but a count and a digest of what it was given
    (partition, key, value of every message, in order): two trees that print the same digest sent the
    same bytes."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.digest = hashlib.sha256()

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        self.messages += 1
        self.bytes += len(value)
        self.digest.update(b"%d %r %d " % (kw["partition"], key, len(value)) + value)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0


MODES = {"slices": "columns, file slices", "batches": "columns, 512-frame batches as live", "frames": "frame by frame"}


def once(topo: config.Topology, pcap: Path, mode: str = "slices") -> tuple[float, int, Discard]:
    """One run of the edge on ``pcap``: through the columns in file slices (``Edge.run([pcap])``, what a
    file replay takes), through the columns a 512-frame batch at a time (``Edge.run(PcapFiles(...))``,
    what a live source takes), or frame by frame (the reference, ``--rate`` replays). The run id is fixed,
    so equal digests mean equal messages."""
    sink = Discard()
    edge = Edge(sink, "packets", topo.topics["packets"].partitions, gate(topo), "bench")
    edge.run_id = 0
    edge.columns = mode != "frames"
    t0 = time.perf_counter()
    edge.run([pcap] if mode == "slices" else PcapFiles([pcap]))
    return time.perf_counter() - t0, edge.stats.sent, sink


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=25000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pcap", type=Path, default=None, help="a capture instead of the synthetic one")
    ap.add_argument("--profile", type=Path, default=None, metavar="FILE", help="cProfile one more run into FILE")
    ap.add_argument("--frames", action="store_true",
                    help="also time the columns a batch at a time and frame by frame, alternating with the file "
                         "slices; print each and the ratios, and check that all send the same messages")
    args = ap.parse_args()
    topo = config.load(config.DEFAULT_PATH)
    pcap = args.pcap
    if pcap is None:
        pcap = Path(tempfile.mkdtemp(prefix="rstscope-edge-loop-")) / "synth.pcap"
        synth_pcap(pcap, args.connections)
    once(topo, pcap)  # warm-up: imports, page cache
    modes = list(MODES) if args.frames else ["slices"]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    digests: dict[str, str] = {}
    for _ in range(args.runs):
        for mode in modes:
            dt, n, sink = once(topo, pcap, mode)
            rates[mode].append(n / dt)
            digests[mode] = sink.digest.hexdigest()[:16]
    for mode in modes:
        print(f"{REPO}: edge loop without Kafka ({MODES[mode]}), {n} records, {sink.messages} messages, "
              f"{sink.bytes} bytes, sha256 {digests[mode]}; records/s runs "
              f"{' '.join(f'{r:,.0f}' for r in rates[mode])}; median {statistics.median(rates[mode]):,.0f}")
    if args.frames:
        ref = statistics.median(rates["frames"])
        for mode in ("slices", "batches"):
            print(f"{MODES[mode]} / frame by frame: {statistics.median(rates[mode]) / ref:.2f}x (medians)")
        same = len(set(digests.values())) == 1
        print("the same messages" if same else "DIFFERENT MESSAGES")
        if not same:
            return 1
    if args.profile is not None:
        import cProfile

        cProfile.runctx("once(topo, pcap)", globals(), {"topo": topo, "pcap": pcap}, str(args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
