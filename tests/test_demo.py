"""The README's first command: `rstscope analyze examples/demo.pcap` (fixtures merged by scripts/make_demo.py).

Expected numbers follow from the parts' MANIFEST entries: merged in time order, each part's end marker
(a SYN to a closed port, refused by the server) is followed by later traffic, so all but the last become
Post-SYN timeouts instead of incomplete flows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from make_demo import PARTS  # noqa: E402


def expected() -> dict[str, Counter[str]]:
    fixtures = json.loads((ROOT / "tests/fixtures/MANIFEST.json").read_text())["fixtures"]
    manifest = {f["file"]: f["expect"] for f in fixtures}
    total: dict[str, Counter[str]] = {"stages": Counter(), "tags": Counter(), "signatures": Counter(),
                                      "excluded": Counter()}
    for name in PARTS:
        for k in total:
            total[k].update(manifest[name].get(k, {}))
    markers = len(PARTS) - 1
    total["stages"]["post_syn"] += markers
    total["tags"]["timeout"] += markers
    total["signatures"]["SYN→∅"] += markers
    total["excluded"]["incomplete"] -= markers
    return total


def test_readme_first_command_classifies_the_demo_capture() -> None:
    out = subprocess.run([sys.executable, "-m", "rstscope.cli", "analyze", str(ROOT / "examples/demo.pcap"),
                          "--format", "json"], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    want = expected()
    assert got["connections"] == sum(want["stages"].values())
    for k in ("stages", "tags", "signatures"):
        assert {a: b for a, b in got[k].items() if b} == {a: b for a, b in want[k].items() if b}, k
    for k in ("multi_syn", "incomplete"):
        assert got["excluded"][k] == want["excluded"][k]
