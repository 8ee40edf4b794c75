"""Real captures made by scripts/make_fixtures.py with real tools in network namespaces.

Each fixture's expected numbers in tests/fixtures/MANIFEST.json were derived by the script's own reader and
classifier (never rstscope) and had to equal what the scenario was designed to produce; docs/fixtures.md
explains each one. No capture has an end marker: each ends when its traffic ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rstscope import config
from rstscope.offline import Analyzer, Options

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())["fixtures"]
CONNECTION_EXCLUSIONS = ("multi_syn", "incomplete")


def nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


def analyze(path: Path, **opts: object) -> dict:
    a = Analyzer(config.load(), Options(**opts))  # type: ignore[arg-type]
    return a.run([path]).to_dict()


@pytest.mark.parametrize("fx", MANIFEST, ids=[f["file"] for f in MANIFEST])
def test_fixture_counts(fx: dict) -> None:
    got = analyze(FIXTURES / fx["file"])
    want = fx["expect"]
    assert got["connections"] == want["connections"]
    assert nonzero(got["stages"]) == nonzero(want["stages"])
    assert nonzero(got["tags"]) == nonzero(want.get("tags", {}))
    assert nonzero(got["signatures"]) == nonzero(want.get("signatures", {}))
    got_excl = {k: got["excluded"][k] for k in CONNECTION_EXCLUSIONS}
    want_excl = {k: want.get("excluded", {}).get(k, 0) for k in CONNECTION_EXCLUSIONS}
    assert got_excl == want_excl


@pytest.mark.parametrize("fx", [f for f in MANIFEST if f.get("server_ports")], ids=lambda f: f["file"])
def test_configured_direction_agrees_with_learnt_direction(fx: dict) -> None:
    learnt = analyze(FIXTURES / fx["file"])
    configured = analyze(FIXTURES / fx["file"], server_ips=[fx["server_ip"]],
                         server_ports=[int(p) for p in fx["server_ports"]])
    assert configured["stages"] == learnt["stages"]
    assert configured["tags"] == learnt["tags"]
