"""docs/method.md names, for every rule, the test that pins it: those tests must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_named_in_the_method_doc_exists() -> None:
    doc = (ROOT / "docs/method.md").read_text()
    named = set(re.findall(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`", doc))
    defined = {m for p in (ROOT / "tests").rglob("test_*.py")
               for m in re.findall(r"^def (test_\w+)", p.read_text(), re.M)}
    assert len(named) > 20
    assert sorted(named - defined) == []
