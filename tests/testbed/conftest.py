"""Session fixture for the real-network tampering bed (issue 6).

``bed_report`` builds the bed ONCE per test session (tests/testbed/bed.py: namespaces, nginx + TLS, the
NFQUEUE middlebox, two captures, `rstscope analyze`, the join to the labels) and returns its report.
It skips, with the reason, when not root or when a tool / the NetfilterQueue package is missing.

Environment:
  RSTSCOPE_TESTBED_OUT    keep the bed's files (captures, labels, report) in this directory
                          (default: a pytest tmp dir)
  RSTSCOPE_TESTBED_GUARD  seconds the capture keeps away from a 15-minute window boundary
                          (default 30: rstscope's cutoff margin is 10 s; scripts/testbed.py uses 90)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

_BED = Path(__file__).with_name("bed.py")


def _load_bed() -> Any:
    spec = importlib.util.spec_from_file_location("rstscope_testbed_bed", _BED)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def bed_module() -> Any:
    return _load_bed()


@pytest.fixture(scope="session")
def bed_report(bed_module: Any, tmp_path_factory: pytest.TempPathFactory) -> dict:
    if os.geteuid() != 0:
        pytest.skip("the tampering test bed needs root (network namespaces, iptables NFQUEUE, raw sockets)")
    missing = bed_module.missing_tools()
    if missing:
        pytest.skip("the tampering test bed needs: " + ", ".join(missing))
    out = Path(os.environ.get("RSTSCOPE_TESTBED_OUT") or tmp_path_factory.mktemp("testbed"))
    guard = float(os.environ.get("RSTSCOPE_TESTBED_GUARD", "30"))
    rep = bed_module.run(out, guard=guard)
    rep["out"] = str(out)
    return rep
