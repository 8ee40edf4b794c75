"""Bad input is counted, never a crash: a short run of each bench/fuzz_*.py target (CI), the long runs
are `make soak` (``RSTSCOPE_FUZZ_INPUTS``, 1,000,000 each there).

With atheris installed the targets run under libFuzzer (coverage-guided) in a subprocess; otherwise the
same targets are driven in-process by hypothesis (byte strings and mutations of the seed corpus).
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.faults

BENCH = Path(__file__).resolve().parents[2] / "bench"
INPUTS = int(os.environ.get("RSTSCOPE_FUZZ_INPUTS", "3000"))
TARGETS = ("pcap", "nflog", "packet")


def _module(name: str) -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(f"fuzz_{name}")


def _has_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_target(name: str, figures: dict[str, Any]) -> None:
    if _has_atheris():
        # libFuzzer writes crash-*/timeout-* artifacts to its working directory: keep them out of the repo
        artifacts = tempfile.mkdtemp(prefix=f"rstscope-fuzz-{name}-")
        r = subprocess.run([sys.executable, str(BENCH / f"fuzz_{name}.py"), "--engine", "atheris",
                            f"-runs={INPUTS}", "-seed=1", f"-artifact_prefix={artifacts}/"], capture_output=True,
                           text=True, timeout=900)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        assert r.returncode == 0 and lines, (f"fuzz_{name} crashed (artifacts in {artifacts}):\n{r.stdout[-3000:]}\n"
                                             f"{r.stderr[-6000:]}")
        result = json.loads(lines[-1])
    else:
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        mod = _module(name)
        target, seeds = mod.make_target(), mod.seeds()
        common = _module("common")
        outcomes: dict[str, int] = {}

        @settings(max_examples=INPUTS, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.one_of(st.binary(max_size=4096),
                         st.builds(lambda s, n: common.mutate(random.Random(n), seeds, s), st.sampled_from(seeds),
                                   st.integers(0, 2**32 - 1))))
        def run(data: bytes) -> None:
            k = target(data)
            outcomes[k] = outcomes.get(k, 0) + 1

        run()
        result = {"target": name, "engine": "hypothesis", "inputs": sum(outcomes.values()), "outcomes": outcomes}
    assert result["inputs"] >= INPUTS
    figures.update(inputs=result["inputs"], fuzz_target=name, engine=result["engine"],
                   inputs_per_s=result.get("inputs_per_s"), crashes=0,
                   outcome_kinds=len(result["outcomes"]))


def test_damaged_gzip_is_counted_not_raised(tmp_path: Path) -> None:
    from rstscope.capture.files import CaptureError, FileStats, read_frames

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "abort_post_psh.pcap"
    z = bytearray(gzip.compress(fixture.read_bytes() * 4))
    z[len(z) // 2] ^= 0xFF  # a corrupt deflate block
    p = tmp_path / "damaged.pcap.gz"
    p.write_bytes(bytes(z))
    st = FileStats(str(p))
    try:
        n = sum(1 for _ in read_frames(p, st))
    except CaptureError:
        return
    assert n >= 0 and st.errors.get("compressed_stream_error") == 1


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), -1.0, 1e300])
def test_absurd_timestamps_are_dead_letters_not_crashes(ts: float) -> None:
    """Found by fuzz_packet: a NaN timestamp crashed ConnectionTable (int(nan)); the worker would have
    crash-looped on the message. Now a dead letter (malformed_record)."""
    import msgpack

    from rstscope.config import load
    from rstscope.streams.connection_agent import ConnectionStage

    stage = ConnectionStage(load(None), warmup_s=0)
    pkt = msgpack.packb([1, 0, ts, 4, b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1, 2, 2, 0, 0, 1, 64, 100, 0, 0])
    wm = msgpack.packb([1, 1, ts, "edge", False])
    for value in (pkt, wm):
        records, errors = stage.feed(0, value, None)
        assert records == [] and [e.reason for e in errors] == ["malformed_record"]
    assert stage.ackable(0) == [None, None]
