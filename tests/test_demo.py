"""The README's first command: `rstscope analyze examples/demo.pcap` (fixtures merged by scripts/make_demo.py).

The demo's expected numbers are not the sum of its parts' MANIFEST entries: merged in time order, a part's
connections that were `incomplete` at the end of its own capture become timeouts when later traffic of
another part follows >= 10 s after them, and parts sharing a 15-minute window share its 4-tuples. So
scripts/make_demo.py derives them from the merged file with scripts/make_fixtures.py's own reader and
classifier (never rstscope) and stores them, with the file's SHA-256, in examples/demo.expect.json.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.pcap"
EXPECT = json.loads((ROOT / "examples" / "demo.expect.json").read_text())


def nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


def test_demo_expectation_belongs_to_the_demo_capture() -> None:
    assert hashlib.sha256(DEMO.read_bytes()).hexdigest() == EXPECT["sha256"], "rerun scripts/make_demo.py"


def test_readme_first_command_classifies_the_demo_capture() -> None:
    out = subprocess.run([sys.executable, "-m", "rstscope.cli", "analyze", str(DEMO), "--format", "json"],
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    want = EXPECT["expect"]
    assert got["connections"] == want["connections"] == sum(want["stages"].values())
    for k in ("stages", "tags", "signatures"):
        assert nonzero(got[k]) == nonzero(want[k]), k
    for k in ("multi_syn", "incomplete"):
        assert got["excluded"][k] == want["excluded"].get(k, 0), k
