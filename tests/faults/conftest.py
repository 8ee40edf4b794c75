"""Figures of the fault tests: each test records what it proved; the session prints a summary.

``RSTSCOPE_FAULT_RUNS`` sets how many random-kill runs (2 in CI, 10 in `make soak`);
``RSTSCOPE_FUZZ_INPUTS`` the inputs per fuzz target; ``RSTSCOPE_FAULTS_REPORT`` a JSON-lines file
for the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIGURES: list[dict[str, Any]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    d: dict[str, Any] = {"test": request.node.name}
    yield d
    FIGURES.append(d)
    path = os.environ.get("RSTSCOPE_FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(d, sort_keys=True, default=str) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Remember each phase's report on the test item, so that ``work`` knows whether the test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def work(request: pytest.FixtureRequest) -> Iterator[Path]:
    # not pytest's tmp_path: concurrent pytest sessions on this machine prune each other's basetemp
    d = Path(tempfile.mkdtemp(prefix="rstscope-faults-"))
    yield d
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:  # a fault that shows once under load: keep its logs for the post-mortem
        print(f"\nrstscope faults: {request.node.name} failed; its logs are kept in {d}", flush=True)
    elif not os.environ.get("RSTSCOPE_KEEP_WORK"):
        shutil.rmtree(d, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    tr = terminalreporter
    tr.section("rstscope fault figures")
    tot = {"runs": 0, "kills": 0, "records produced": 0, "records lost": 0, "duplicates in rollups": 0,
           "inputs fuzzed": 0}
    for d in FIGURES:
        tr.write_line(json.dumps(d, sort_keys=True, default=str))
        tot["runs"] += int(d.get("runs", 1 if "produced" in d else 0))
        tot["kills"] += int(d.get("kills", 0))
        tot["records produced"] += int(d.get("produced", 0))
        tot["records lost"] += int(d.get("lost", 0))
        tot["duplicates in rollups"] += int(d.get("double_counted", 0))
        tot["inputs fuzzed"] += int(d.get("inputs", 0))
    failed = [r.nodeid for r in tr.stats.get("failed", []) if "tests/faults" in r.nodeid]
    tot["failed tests"] = len(failed)
    tr.write_line("TOTAL: " + ", ".join(f"{k} {v}" for k, v in tot.items()))
    for nodeid in failed:
        tr.write_line(f"FAILED: {nodeid}")
