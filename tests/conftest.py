"""Real Kafka brokers for the test session (no mocks), started by :mod:`rstscope.kafka.local`.

Fixtures:

- ``kafka_bootstrap`` (session): bootstrap servers of a 1-broker cluster. Uses ``$KAFKA_BOOTSTRAP_SERVERS``
  when set (nothing is started then), else starts a 1-broker KRaft cluster in a tmp dir and stops it at
  the end of the session.
- ``kafka_cluster3`` (per test, over one cluster per session): a :class:`LocalCluster` of 3 combined
  broker+controller nodes with a 3-voter quorum, for failover tests (``kill_node``/``start_node``). Any
  node a test left stopped is restarted after the test, so tests do not see each other's faults.

Broker data lives in ``tempfile.mkdtemp`` directories, not pytest's tmp dirs: pytest prunes those across
concurrent sessions, which once removed a running broker's data.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rstscope.kafka import local


@dataclass
class LocalCluster:
    dir: Path
    bootstrap: str
    node_ids: list[int]

    def kill_node(self, node_id: int, sig: int = signal.SIGKILL, *, wait: bool = True) -> None:
        local.kill_node(self.dir, node_id, sig, wait=wait)

    def start_node(self, node_id: int, *, wait: bool = True, timeout: float = 90.0) -> None:
        local.start_node(self.dir, node_id, wait=wait, timeout=timeout)

    def running_nodes(self) -> list[int]:
        return local.running_nodes(self.dir)

    def address(self, node_id: int) -> str:
        return self.bootstrap.split(",")[self.node_ids.index(node_id)]

    def log_tail(self, node_id: int, lines: int = 40) -> str:
        return local.log_tail(self.dir, node_id, lines)

    def ensure_all_running(self, timeout: float = 90.0) -> None:
        for node_id in self.node_ids:
            if node_id not in self.running_nodes():
                self.start_node(node_id, wait=False)
        local.wait_ready(self.dir, self.node_ids, timeout=timeout)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    d = Path(tempfile.mkdtemp(prefix="rstscope-kafka1-"))
    try:
        with local.running_cluster(1, d, die_with_parent=True) as bootstrap:
            yield bootstrap
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def _kafka_cluster3_session() -> Iterator[LocalCluster]:
    d = Path(tempfile.mkdtemp(prefix="rstscope-kafka3-"))
    try:
        with local.running_cluster(3, d, die_with_parent=True) as bootstrap:
            yield LocalCluster(dir=d, bootstrap=bootstrap, node_ids=[1, 2, 3])
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def kafka_cluster3(_kafka_cluster3_session: LocalCluster) -> Iterator[LocalCluster]:
    cluster = _kafka_cluster3_session
    cluster.ensure_all_running()
    yield cluster
    cluster.ensure_all_running()
