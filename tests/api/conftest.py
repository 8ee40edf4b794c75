"""Shared data for the API tests: rollup rows made by the real core (`Rollup`) from synthetic connection
records for several countries, ASes and buckets, and a real `rstscope analyze` run over a fixture pcap."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from rstscope.api.app import create_app
from rstscope.api.store import Store
from rstscope.core.rollup import Rollup
from rstscope.insights.model import Alert, AlertEvidence, alert_id

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
BASE = 1725235200  # 2024-09-02T00:00:00Z, a Monday
NOW = datetime(2024, 9, 3, 12, 0, tzinfo=UTC)
STAGE_TAGS = {
    "post_syn": (["reset", "single_rst"], "SYN→RST"),
    "post_ack": (["timeout"], "SYN;ACK→∅"),
    "post_psh": (["reset", "multiple_rsts", "acknumsame"], "PSH+ACK→RST=RST"),
    "later_in_flow": (["reset", "single_rstack"], "PSH+ACK;Data→RST+ACK"),
    "no_match": ([], None),
}
# (country, asn) -> connections per stage in one bucket; DE:3320 looks tampered (Post-PSH heavy).
PROFILE: dict[tuple[str, int], dict[str, int]] = {
    ("DE", 3320): {"post_syn": 2, "post_ack": 1, "post_psh": 12, "later_in_flow": 1, "no_match": 24},
    ("DE", 6805): {"post_syn": 1, "post_ack": 0, "post_psh": 0, "later_in_flow": 1, "no_match": 18},
    ("FR", 3215): {"post_syn": 5, "post_ack": 2, "post_psh": 1, "later_in_flow": 0, "no_match": 12},
    ("US", 7922): {"post_syn": 30, "post_ack": 3, "post_psh": 2, "later_in_flow": 5, "no_match": 60},
    ("XX", 0): {"post_syn": 9, "post_ack": 0, "post_psh": 0, "later_in_flow": 0, "no_match": 1},
}
# The ASN database's names of the test ASes (what the records' `as_name` carries); AS 0 has none.
AS_NAMES = {3320: "DTAG Internet service provider operations", 6805: "TDDE-ASN1", 3215: "Orange",
            7922: "COMCAST-7922", 28573: "Claro NXT Telecomunicacoes Ltda", 58224: "Iran Telecommunication Company PJS",
            4134: "CHINANET-BACKBONE"}
# Buckets with data: 8 consecutive on day 1 (two hours), 4 on day 2; bucket i scales counts by (1 + i % 3).
BUCKETS = [BASE + i * 900 for i in range(8)] + [BASE + 86400 + i * 900 for i in range(4)]


def records() -> Iterator[dict[str, Any]]:
    for i, b in enumerate(BUCKETS):
        for (cc, asn), stages in PROFILE.items():
            for stage, n in stages.items():
                tags, sig = STAGE_TAGS[stage]
                for _ in range(n * (1 + i % 3)):
                    yield {"window_start": b, "country": cc, "asn": asn, "as_name": AS_NAMES.get(asn, ""),
                           "stage": stage, "tags": tags, "signature": sig}


def make_rows() -> list[dict[str, Any]]:
    roll = Rollup()
    roll.extend(records())
    return list(roll.rows())


def expected_counts(pairs: set[tuple[str, int]] | None = None, buckets: list[int] | None = None) -> dict[str, int]:
    """The raw counts the API must turn into shares (the oracle, independent of the store)."""
    out = dict.fromkeys(STAGE_TAGS, 0)
    for i, b in enumerate(BUCKETS):
        if buckets is not None and b not in buckets:
            continue
        for pair, stages in PROFILE.items():
            if pairs is None or pair in pairs:
                for s, n in stages.items():
                    out[s] += n * (1 + i % 3)
    return out


def shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {s: 100.0 * n / total for s, n in counts.items()}


@pytest.fixture(scope="session")
def rows() -> list[dict[str, Any]]:
    return make_rows()


@pytest.fixture(scope="session")
def rollups_file(tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]) -> Path:
    p = tmp_path_factory.mktemp("rollups") / "synthetic.jsonl"
    p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return p


@pytest.fixture(scope="session")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Rollups and connections from the real pipeline over a fixture capture."""
    import subprocess

    d = tmp_path_factory.mktemp("analyzed")
    pcaps = [str(FIXTURES / f) for f in ("abort_post_psh.pcap", "idle_timeouts.pcap", "abort_later.pcap",
                                         "http_ok.pcap", "hping3.pcap")]
    run = subprocess.run([sys.executable, "-m", "rstscope.cli", "analyze", *pcaps, "--rollups", str(d / "r.jsonl"),
                          "--out", str(d / "c.jsonl"), "--format", "json"], cwd=REPO, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    return d / "r.jsonl", d / "c.jsonl"


QUIC_SERVERS = "10.78.2.2,10.78.2.3,fd78:2::2,fd78:2::3"  # of tests/fixtures/quic_bed.pcap (docs/quic.md)


@dataclass(frozen=True)
class Mixed:
    """A store's worth of both transports, from real records: `rstscope analyze --rollups` over TCP
    fixtures and the rollup of `rstscope quic --out` over the QUIC bed's capture."""

    rollups: Path  # both transports' rows, one JSON lines file
    tcp_rollups: Path  # the TCP rows alone (what a store had before QUIC)
    quic_records: list[dict[str, Any]]
    quic_rows: list[dict[str, Any]]


@pytest.fixture(scope="session")
def mixed(tmp_path_factory: pytest.TempPathFactory, analyzed: tuple[Path, Path]) -> Mixed:
    d = tmp_path_factory.mktemp("mixed")
    run = subprocess.run([sys.executable, "-m", "rstscope.cli", "quic", str(FIXTURES / "quic_bed.pcap"),
                          "--server-ip", QUIC_SERVERS, "--out", str(d / "quic.jsonl")], cwd=REPO, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()
    records = [orjson.loads(line) for line in (d / "quic.jsonl").read_bytes().splitlines()]
    roll = Rollup()
    roll.extend(records)
    quic_rows = list(roll.rows())
    both = d / "both.jsonl"
    both.write_bytes(analyzed[0].read_bytes() + b"".join(orjson.dumps(r) + b"\n" for r in quic_rows))
    return Mixed(both, analyzed[0], records, quic_rows)


@pytest.fixture(scope="session")
def store(rows: list[dict[str, Any]]) -> Store:
    s = Store()
    s.upsert(rows)
    return s


@pytest.fixture(scope="session")
def client(store: Store) -> TestClient:
    return TestClient(create_app(store, now=lambda: NOW))


RICH_START = 1725235200  # 2024-09-02T00:00:00Z
# (country, asn) -> (connections per bucket, base shares of post_syn, post_ack, post_psh, later_in_flow).
RICH_PROFILE: dict[tuple[str, int], tuple[int, tuple[float, float, float, float]]] = {
    ("US", 7922): (70, (0.10, 0.03, 0.02, 0.03)),
    ("DE", 3320): (40, (0.06, 0.02, 0.02, 0.02)),
    ("FR", 3215): (30, (0.07, 0.03, 0.01, 0.02)),
    ("BR", 28573): (25, (0.14, 0.05, 0.02, 0.03)),
    ("IR", 58224): (15, (0.12, 0.06, 0.06, 0.02)),
    ("CN", 4134): (25, (0.20, 0.04, 0.05, 0.03)),
    ("XX", 0): (6, (0.60, 0.02, 0.00, 0.00)),
}


def rich_records(days: int = 3) -> Iterator[dict[str, Any]]:
    """A few days of buckets with a daily cycle and one tampering episode (IR, Post-PSH), for the dashboard."""
    import math
    import random

    rnd = random.Random(5)
    stages = ("post_syn", "post_ack", "post_psh", "later_in_flow")
    for i in range(days * 96):
        b = RICH_START + i * 900
        day_phase = math.sin(2 * math.pi * (i % 96) / 96)
        for (cc, asn), (n, base) in RICH_PROFILE.items():
            conns = max(1, int(n * (1 + 0.35 * day_phase) * rnd.uniform(0.8, 1.2)))
            probs = list(base)
            if cc == "IR" and 130 <= i < 170:
                probs[2] += 0.35  # a shutdown-like episode of Post-PSH resets
            for _ in range(conns):
                u, stage, acc = rnd.random(), "no_match", 0.0
                for s, p in zip(stages, probs, strict=True):
                    acc += p
                    if u < acc:
                        stage = s
                        break
                tags, sig = STAGE_TAGS[stage]
                if stage == "post_syn" and rnd.random() < 0.5:
                    tags, sig = ["timeout", "zmap"], "SYN→∅"
                yield {"window_start": b, "country": cc, "asn": asn, "as_name": AS_NAMES.get(asn, ""), "stage": stage,
                       "tags": tags, "signature": sig}


def rich_rows(days: int = 3) -> list[dict[str, Any]]:
    roll = Rollup()
    roll.extend(rich_records(days))
    return list(roll.rows())


def make_alert(dimension: str, key: str, stage: str, start: int, end: int | None, *, size_pp: float = 20.0,
               baseline_share: float = 5.0, recurring: bool = False, name: str = "",
               connections: int = 1000) -> Alert:
    """An alert as the alert agent writes it (the model's own id and wire format), with consistent counts."""
    observed = baseline_share + size_pp
    return Alert(id=alert_id(dimension, key, stage, start, recurring), dimension=dimension, key=key, stage=stage,
                 start=start, end=end, state="open" if end is None else "closed",
                 direction="rise" if size_pp >= 0 else "fall", observed_share=observed,
                 baseline_share=baseline_share, size_pp=size_pp, score=8.5,
                 evidence=AlertEvidence(connections=connections, stage_connections=round(connections * observed / 100),
                                        baseline_connections=7 * connections,
                                        baseline_stage_connections=round(7 * connections * baseline_share / 100),
                                        baseline_days=7, units=max(1, ((end or start + 3600) - start) // 3600)),
                 name=name, recurring=recurring, period_s=86400 if recurring else None)


def write_alerts(path: Path, alerts: list[Alert]) -> Path:
    """A JSON lines file of wire alerts, as `rstscope alerts --out` writes it."""
    path.write_bytes(b"".join(orjson.dumps(a.to_wire()) + b"\n" for a in alerts))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(rollups: Path, module: str = "rstscope.cli", alerts: Path | None = None) -> Iterator[str]:
    """`rstscope serve --rollups FILE [--alerts FILE]` as a real process on a free loopback port; yields its
    base URL once it answers (30 s at most), stops it after."""
    port = free_port()
    extra = ["--alerts", str(alerts)] if alerts is not None else []
    proc = subprocess.Popen([sys.executable, "-m", module, "serve", "--port", str(port), "--rollups", str(rollups),
                             *extra],
                            cwd=Path(__file__).resolve().parents[2], stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/rstscope/meta", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server died"
            assert time.monotonic() < deadline, "rstscope serve did not start"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
