"""docker/ cannot be run here (no Docker engine), so check what can drift: the compose file's commands
parse with the real CLI, and docker/topology.yaml differs from the packaged one only in replication."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from rstscope import config

ROOT = Path(__file__).resolve().parent.parent


def test_compose_commands_are_real_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka1", "kafka2", "kafka3", "topics", "worker", "edge", "alert-agent", "sink", "api"} <= set(services)
    for name in ("topics", "worker", "edge", "alert-agent", "sink", "api"):
        cmd = services[name]["command"]
        r = subprocess.run([sys.executable, "-m", "rstscope.cli", cmd[0], "--help"], capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr)
        for flag in (a for a in cmd if a.startswith("--")):
            assert flag in r.stdout, (name, flag)


def test_docker_topology_differs_only_in_replication() -> None:
    packaged = config.load()
    docker = config.load(ROOT / "docker/topology.yaml")
    assert docker.window == packaged.window and docker.sampling == packaged.sampling
    assert docker.evidence == packaged.evidence
    assert docker.alerts == packaged.alerts and docker.outliers == packaged.outliers and docker.edges == packaged.edges
    assert set(docker.topics) == set(packaged.topics)
    for role, spec in docker.topics.items():
        assert spec.replication == 3
        assert spec.name == packaged.topics[role].name and spec.partitions == packaged.topics[role].partitions
