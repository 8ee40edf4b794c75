"""Python's cyclic garbage collector, set for a long-running stream process.

A worker allocates several containers per packet record (msgpack's lists, records, dicts) and keeps
many alive for a while (held connections, unacked messages). With Python's default thresholds (a
young collection every 700 net allocations) the collector re-scans those survivors again and again:
measured, 11-12% of the connection stage's time and 7% of the rollup stage's (bench/bench_pipeline.py's
in-process stages, 100,000 connections). Nothing here changes what is collected, only how often.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG = 10_000  # net container allocations between young collections (Python's default: 700)


def for_long_runs() -> None:
    """Freeze what start-up built (modules, the Faust app, geo tables: never garbage, so never scanned
    again) and collect the young generation every ``YOUNG`` allocations instead of 700."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)


@contextmanager
def paused() -> Iterator[None]:
    """No collection during a bulk load that only adds live objects (nothing it makes is garbage, so a
    collection there only re-scans them: a rollup rebuild of 200,000 connections spent 40% of its time
    so). The collector's previous state is restored after, also when the load raises."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
