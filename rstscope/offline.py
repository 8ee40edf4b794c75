"""`rstscope analyze`: capture files -> classified connections and rollups, offline.

(The module is `rstscope.offline`; the Python API on top of it is `rstscope.analyze()`.)

A thin shell around the core: frames are decoded, gated (direction, sampling, first N packets) and
fed to the connection table; finished connections are classified and counted. The Kafka path runs
the same gate at the edge and the same table in the workers.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rstscope import config
from rstscope.capture.files import FileStats, read_frames
from rstscope.config import Topology
from rstscope.core.record import ConnectionRecord, make_record
from rstscope.core.rollup import Rollup
from rstscope.core.summary import Summary
from rstscope.core.table import ConnectionTable, Finished
from rstscope.decode import NON_TCP_REASONS, decode_frame
from rstscope.direction import Direction
from rstscope.geo import GeoDB
from rstscope.packet import PacketRecord
from rstscope.sampling import Gate, Sampler

RecordSink = Callable[[ConnectionRecord], None]
ENGINES = ("batch", "packet")


@dataclass
class Options:
    server_ips: list[str] = field(default_factory=list)
    server_ports: list[int] = field(default_factory=list)
    probability: float = 1.0
    sample_mode: str = "random"
    sample_key: str | None = None
    engine: str = "batch"  # batch (rstscope.fastpath, same results) or packet (the reference, per packet)


def with_window(topo: Topology, *, idle: float | None = None, timeout: float | None = None,
                grace: float | None = None) -> Topology:
    """The topology with the window options of a run (idle mode, timeout, grace); TopologyError if invalid."""
    w = topo.window
    changes: dict[str, object] = {}
    if idle is not None:
        changes.update(mode=config.MODE_IDLE, idle_s=idle)
    if timeout is not None:
        changes["timeout_s"] = timeout
    if grace is not None:
        changes["grace_s"] = grace
    if not changes:
        return topo
    topo = dataclasses.replace(topo, window=dataclasses.replace(w, **changes))  # type: ignore[arg-type]
    config.validate(topo)
    return topo


class Progress:
    """A one-line progress report on stderr for long runs (bytes of input read, packets/s)."""

    def __init__(self, total_bytes: int, enabled: bool) -> None:
        self.total = max(total_bytes, 1)
        self.enabled = enabled
        self.start = time.monotonic()
        self.next = self.start + 1.0

    def update(self, done_bytes: int, packets: int) -> None:
        now = time.monotonic()
        if not self.enabled or now < self.next:
            return
        self.next = now + 1.0
        rate = packets / max(now - self.start, 1e-9)
        pct = min(100.0, 100.0 * done_bytes / self.total)
        sys.stderr.write(f"\ranalyze: {pct:5.1f}%  {packets:,} packets  {rate:,.0f} packets/s ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and time.monotonic() - self.start >= 1.0:
            sys.stderr.write("\n")


class Analyzer:
    """Wires gate, table, classification, geo and rollup for one offline run."""

    def __init__(self, topology: Topology, options: Options, geo: GeoDB | None = None,
                 on_record: RecordSink | None = None) -> None:
        w = topology.window
        self.topology = topology
        self.gate = Gate(Direction(options.server_ips, options.server_ports),
                         Sampler(options.probability, options.sample_mode, options.sample_key), w)
        self.table = ConnectionTable(w)
        self.geo = geo or GeoDB.empty()
        self.summary = Summary(mode=w.mode)
        self.rollup = Rollup(w.size_s)
        self.on_record = on_record
        self.files: list[FileStats] = []
        self.end_ts = float("-inf")  # the latest frame of any kind: where the input ends
        if options.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
        self.engine = options.engine
        self.engine_used = ""  # which engine decided the last run

    def _finish(self, done: Iterable[Finished]) -> None:
        w = self.topology.window
        ev = self.topology.evidence
        for f in done:
            if f.excluded:
                continue
            g = self.geo.lookup(f.conn.key[0])
            rec = make_record(f.conn, w.max_packets, ev, w.mode, g.country, g.asn, g.as_name)
            self.summary.count(rec)
            self.rollup.add(rec)
            if self.on_record is not None:
                self.on_record(rec)

    def packets(self, paths: Iterable[Path], progress: Progress | None = None) -> Iterator[PacketRecord]:
        """Decode the frames of every file in turn, counting what is not a usable TCP packet."""
        pk = self.summary.packets
        mal = self.summary.malformed
        excl = self.summary.excluded
        done_bytes = 0
        for path in paths:
            st = FileStats(str(path))
            self.files.append(st)
            for ts, linktype, data in read_frames(path, st):
                pk["read"] += 1
                if ts > self.end_ts:
                    self.end_ts = ts
                rec = decode_frame(ts, linktype, data)
                if isinstance(rec, str):
                    if rec in NON_TCP_REASONS:
                        excl["non_tcp"] += 1
                    else:
                        excl["malformed"] += 1
                        mal[rec] += 1
                    continue
                pk["tcp"] += 1
                if progress is not None and not pk["tcp"] & 0x3FFF:
                    progress.update(done_bytes + st.bytes_read, pk["read"])
                yield rec
            done_bytes += st.bytes_read
            for reason, n in st.errors.items():
                excl["malformed"] += n
                mal[reason] += n

    def run(self, paths: Iterable[Path], progress: Progress | None = None) -> Summary:
        """Analyze the files: with the batch engine when it applies (same results), else packet by packet."""
        paths = list(paths)
        delivered = 0
        if self.engine == "batch":
            from rstscope.fastpath.engine import run as run_batch

            left = run_batch(self, paths, progress)
            if left is None:
                self.engine_used = "batch"
                if progress is not None:
                    progress.done()
                return self.summary
            delivered = left
            if delivered:  # it stopped after some slices: start over, without delivering their records again
                w = self.topology.window
                self.summary = Summary(mode=w.mode)
                self.rollup = Rollup(w.size_s)
                self.files = []
                self.end_ts = float("-inf")
        return self.run_packets(paths, progress, delivered)

    def run_packets(self, paths: Iterable[Path], progress: Progress | None = None, delivered: int = 0) -> Summary:
        """The reference: every packet through Gate.admit and ConnectionTable.add, as the workers do.

        ``delivered``: the records the table emits while the first that many frames are read went to
        the sink already (the batch engine emits exactly those by then), so they are not sent again."""
        self.engine_used = "packet"
        admit = self.gate.admit
        add = self.table.add
        finish = self._finish
        sink = self.on_record
        if delivered and sink is not None:
            read = self.summary.packets

            def after(rec: ConnectionRecord) -> None:
                if read["read"] > delivered:
                    sink(rec)

            self.on_record = after
        try:
            for pkt in self.packets(paths, progress):
                if admit(pkt):
                    done = add(pkt)
                    if done:
                        finish(done)
            # The input ends at its latest frame (TCP or not): the cutoff of what is still undecided.
            finish(self.table.close(self.end_ts))
        finally:
            self.on_record = sink
        self.summary.take_counters(self.gate.counters, self.table.counters)
        if progress is not None:
            progress.done()
        return self.summary

