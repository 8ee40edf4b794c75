"""Start and stop a whole cluster, crash and restart single nodes: the Python API tests and tools call.

It composes the other modules: jars, cluster description, TLS, processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rstscope.kafka.local.cluster import (
    DEFAULT_HEAP,
    Cluster,
    Node,
    default_dir,
    free_ports,
    kafka_uuid,
    server_properties,
)
from rstscope.kafka.local.errors import LocalKafkaError, log
from rstscope.kafka.local.jars import KAFKA_VERSION, data_file, ensure_libs
from rstscope.kafka.local.processes import (
    format_storage,
    kill_pids,
    launch,
    live_pid,
    pid_file,
    stop_nodes,
    wait_brokers,
    wait_dead,
)
from rstscope.kafka.local.tls import add_scram_users, make_tls


def start(brokers: int = 1, dir: Path | None = None, *, version: str = KAFKA_VERSION, heap: str | None = None,
          timeout: float = 120.0, extra_props: dict[str, str] | None = None,
          die_with_parent: bool = False, scram_users: dict[str, str] | None = None) -> str:
    """Start a fresh local cluster of ``brokers`` combined broker+controller nodes in ``dir``.

    Returns the bootstrap servers (``127.0.0.1:PORT,...``) once every broker is listed in the cluster
    metadata. A previous, stopped cluster in ``dir`` is wiped (only the files this module creates);
    a running one raises :class:`LocalKafkaError`. On failure the nodes started are stopped again.

    ``extra_props`` are added to (or override) every node's server.properties. With ``die_with_parent``
    the nodes are SIGKILLed by the kernel when the calling process dies (for test fixtures: no broker
    outlives a killed pytest); the CLI leaves it off, so brokers outlive ``start``.

    ``scram_users`` (name -> password) adds a TLS + SASL/SCRAM listener to every node (module docs);
    the returned bootstrap stays the PLAINTEXT one, :func:`secure_bootstrap` gives the other.
    """
    if brokers < 1:
        raise ValueError("brokers must be >= 1")
    dir = Path(dir if dir is not None else default_dir()).absolute()
    dir.mkdir(parents=True, exist_ok=True)
    if (dir / "cluster.json").exists():
        old = Cluster.load(dir)
        alive = [n.node_id for n in old.nodes if live_pid(old, n.node_id) is not None]
        if alive:
            raise LocalKafkaError(f"a local Kafka cluster is already running in {dir} (nodes {alive}, "
                                  f"bootstrap {old.bootstrap}); stop it first")
        for n in old.nodes:
            shutil.rmtree(old.node_dir(n.node_id), ignore_errors=True)
        shutil.rmtree(old.tls_dir, ignore_errors=True)
        (dir / "cluster.json").unlink()

    libs = ensure_libs(version)
    t0 = time.monotonic()
    secure = scram_users is not None
    k = 3 if secure else 2
    ports = free_ports(k * brokers)
    c = Cluster(dir=dir, version=version, cluster_id=kafka_uuid(),
                heap=heap or os.environ.get("RSTSCOPE_KAFKA_HEAP", DEFAULT_HEAP),
                nodes=[Node(node_id=i + 1, port=ports[k * i], controller_port=ports[k * i + 1],
                            directory_id=kafka_uuid(), secure_port=ports[k * i + 2] if secure else 0)
                       for i in range(brokers)],
                extra_props=dict(extra_props or {}), die_with_parent=die_with_parent, secure=secure)
    if secure:
        make_tls(c.tls_dir)
    shutil.copy(data_file("log4j2.properties"), dir / "log4j2.properties")
    for n in c.nodes:
        nd = c.node_dir(n.node_id)
        nd.mkdir(parents=True, exist_ok=True)
        (nd / "server.properties").write_text(server_properties(c, n))
    c.save()
    log(f"formatting {brokers} KRaft node(s) in {dir} (Kafka {version}) ...")
    format_storage(c, libs, c.nodes)
    pids: list[int] = []
    try:
        for n in c.nodes:
            pids.append(launch(c, libs, n))
        log(f"started node(s) {[n.node_id for n in c.nodes]}, waiting for the brokers ...")
        wait_brokers(c, {n.node_id for n in c.nodes}, timeout)
        if scram_users:
            add_scram_users(c.bootstrap, scram_users)
    except BaseException:
        kill_pids(pids, timeout=10)
        for n in c.nodes:
            with contextlib.suppress(FileNotFoundError):
                pid_file(c, n.node_id).unlink()
        raise
    log(f"ready in {time.monotonic() - t0:.1f}s: {c.bootstrap}")
    if secure:
        log(f"SASL_SSL (SCRAM-SHA-256/512, users {sorted(scram_users or {})}): {c.secure_bootstrap}, "
             f"CA {c.tls_dir / 'ca.pem'}")
    return c.bootstrap


def bootstrap_servers(dir: Path | None = None) -> str:
    """The PLAINTEXT bootstrap servers of the cluster in ``dir``, from its cluster.json."""
    return Cluster.load(Path(dir if dir is not None else default_dir())).bootstrap


def stop(dir: Path | None = None, *, timeout: float = 20.0) -> None:
    """Stop every node of the cluster in ``dir``: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Works from any process (uses the pid files). Data stays in ``dir``.
    """
    dir = Path(dir if dir is not None else default_dir())
    try:
        c = Cluster.load(dir)
    except LocalKafkaError:
        log(f"no cluster in {dir}; nothing to stop")
        return
    stop_nodes(c, [n.node_id for n in c.nodes], timeout=timeout)


def kill_node(dir: Path, node_id: int, sig: int = signal.SIGKILL, *, wait: bool = True,
              timeout: float = 30.0) -> None:
    """Send ``sig`` to one node (default SIGKILL: a crash). With ``wait``, return once it has exited;
    a node that ignores SIGTERM beyond ``timeout`` is SIGKILLed."""
    c = Cluster.load(dir)
    pid = live_pid(c, node_id)
    if pid is None:
        raise LocalKafkaError(f"node {node_id} in {dir} is not running")
    os.kill(pid, sig)
    if not wait:
        return
    if not wait_dead(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid, 10)
    with contextlib.suppress(FileNotFoundError):
        pid_file(c, node_id).unlink()


def start_node(dir: Path, node_id: int, *, wait: bool = True, timeout: float = 90.0) -> None:
    """(Re)start one stopped node with its existing data and config; with ``wait``, return once it is
    listed as a broker again."""
    c = Cluster.load(dir)
    if live_pid(c, node_id) is not None:
        raise LocalKafkaError(f"node {node_id} in {dir} is already running")
    libs = ensure_libs(c.version)
    launch(c, libs, c.node(node_id))
    if wait:
        wait_brokers(c, {node_id}, timeout)


@contextlib.contextmanager
def running_cluster(brokers: int, dir: Path, **kwargs: Any) -> Iterator[str]:
    """``with running_cluster(3, tmp) as bootstrap: ...``: start, yield bootstrap servers, always stop."""
    try:
        yield start(brokers, dir, **kwargs)
    finally:
        stop(dir)
