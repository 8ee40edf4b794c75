"""The nodes' JVMs: pid files, storage format, launch, readiness, signals, log tails.

Pids are checked against ``/proc`` (and the node's command line) before any signal, so a stale pid file
never makes this module kill an unrelated process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from rstscope.kafka.local.cluster import HOST, Cluster, Node
from rstscope.kafka.local.errors import LocalKafkaError, log, tail_text
from rstscope.kafka.local.jars import find_java

_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
# Popen objects of nodes started by this process, so killed children are reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

def pid_file(c: Cluster, node_id: int) -> Path:
    """Where a node's JVM pid is kept, so another process (the CLI's ``stop``) finds it."""
    return c.node_dir(node_id) / "pid"


def _is_alive(pid: int) -> bool:
    p = _CHILDREN.get(pid)
    if p is not None:
        if p.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _is_our_node(pid: int, c: Cluster, node_id: int) -> bool:
    """True if pid is alive and is the JVM of this node (guards against pid reuse)."""
    if not _is_alive(pid):
        return False
    if pid in _CHILDREN:  # started by this process (its cmdline may still be empty while it execs)
        return True
    cmdline: list[bytes] = []
    for _ in range(20):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if cmdline != [b""]:
            break
        time.sleep(0.05)  # empty while the process is exec'ing
    props = str(c.node_dir(node_id) / "server.properties").encode()
    return _MAIN_CLASS.encode() in cmdline and props in cmdline


def node_pid(dir: Path, node_id: int) -> int | None:
    """Pid of the running JVM of a node, or None if it is not running."""
    c = Cluster.load(dir)
    return live_pid(c, node_id)


def live_pid(c: Cluster, node_id: int) -> int | None:
    """The pid in the node's pid file if that process is still this node's JVM, else None."""
    try:
        pid = int(pid_file(c, node_id).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_our_node(pid, c, node_id) else None


def running_nodes(dir: Path) -> list[int]:
    """Ids of the nodes whose JVM is running."""
    c = Cluster.load(dir)
    return [n.node_id for n in c.nodes if live_pid(c, n.node_id) is not None]


def log_tail(dir: Path, node_id: int, lines: int = 40) -> str:
    """The last ``lines`` lines of a node's server.log (for error messages and test failures)."""
    path = Path(dir) / f"node-{node_id}" / "server.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return f"(no {path})"
    return tail_text(text, lines)


def _java_cmd(c: Cluster, libs: Path, main: str, args: Sequence[str], *, heap: str | None,
              log_level: str) -> list[str]:
    cmd = [find_java()]
    if heap:
        cmd += [f"-Xmx{heap}", f"-Xms{min(_mb(heap), 256)}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError"]
    else:
        cmd += ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]  # short-lived tools
    cmd += ["-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={c.dir / 'log4j2.properties'}",
            f"-Drstscope.kafka.loglevel={log_level}",
            "-cp", f"{libs}/*", main, *args]
    return cmd


def _mb(heap: str) -> int:
    h = heap.strip().lower()
    mult = {"k": 1 / 1024, "m": 1, "g": 1024}.get(h[-1:])
    return int(float(h[:-1]) * mult) if mult else int(h) // (1024 * 1024)


def format_storage(c: Cluster, libs: Path, nodes: Iterable[Node]) -> None:
    """``kafka-storage format`` for the nodes, in parallel (one JVM each)."""
    procs = []
    for node in nodes:
        props = c.node_dir(node.node_id) / "server.properties"
        args = ["format", "-t", c.cluster_id, "-c", str(props)]
        if len(c.nodes) == 1:
            args.append("--standalone")
        else:
            args += ["--initial-controllers",
                     ",".join(f"{x.node_id}@{HOST}:{x.controller_port}:{x.directory_id}" for x in c.nodes)]
        cmd = _java_cmd(c, libs, _STORAGE_TOOL, args, heap=None, log_level="WARN")
        procs.append((node, subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT)))
    errors = []
    for node, p in procs:
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            text = tail_text(out.decode(errors="replace"), 30)
            errors.append(f"node {node.node_id}: exit {p.returncode}\n{text}")
    if errors:
        raise LocalKafkaError("kafka-storage format failed:\n" + "\n".join(errors))


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def launch(c: Cluster, libs: Path, node: Node) -> int:
    """Start a node's JVM in its own session, logging to its server.log; returns the pid."""
    ndir = c.node_dir(node.node_id)
    cmd = _java_cmd(c, libs, _MAIN_CLASS, [str(ndir / "server.properties")], heap=c.heap, log_level="INFO")
    # PR_SET_PDEATHSIG fires when the forking *thread* exits, so only use it from the main thread
    pdeathsig = c.die_with_parent and threading.current_thread() is threading.main_thread()
    with open(ndir / "server.log", "ab") as log:
        banner = f"\n===== rstscope local-kafka: starting node {node.node_id} at {time.ctime()} =====\n"
        log.write(banner.encode())
        log.flush()
        p = subprocess.Popen(cmd, cwd=ndir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, close_fds=True,
                             preexec_fn=_die_with_parent if pdeathsig else None)
    _CHILDREN[p.pid] = p
    pid_file(c, node.node_id).write_text(f"{p.pid}\n")
    return p.pid


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _broker_ids(bootstrap: str, timeout: float = 2.0) -> set[int]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "socket.timeout.ms": 2000})
    md = admin.list_topics(timeout=timeout)
    return set(md.brokers)


def wait_ready(dir: Path, node_ids: Iterable[int] | None = None, timeout: float = 90.0) -> None:
    """Wait until the given nodes (default: all) are alive and listed as brokers in cluster metadata."""
    c = Cluster.load(dir)
    wait_brokers(c, set(node_ids) if node_ids is not None else {n.node_id for n in c.nodes}, timeout)


def _tails(c: Cluster, node_ids: Iterable[int]) -> str:
    return "\n".join(f"--- tail of {c.node_dir(i)}/server.log ---\n{log_tail(c.dir, i)}" for i in node_ids)


def wait_brokers(c: Cluster, want: set[int], timeout: float) -> None:
    """Wait until the ``want`` nodes are listed as brokers; fail early if one of them exits."""
    deadline = time.monotonic() + timeout
    last_err = ""
    while True:
        dead = [i for i in sorted(want) if live_pid(c, i) is None]
        if dead:
            raise LocalKafkaError(
                f"Kafka node(s) {dead} in {c.dir} exited during startup.\n"
                + _tails(c, dead))
        ports = [c.node(i).port for i in sorted(want)]
        if all(_port_open(p) for p in ports):
            try:
                seen = _broker_ids(",".join(f"{HOST}:{p}" for p in ports))
                if want <= seen:
                    return
                last_err = f"metadata lists brokers {sorted(seen)}, waiting for {sorted(want)}"
            except Exception as e:  # KafkaException: not ready yet
                last_err = f"metadata request failed: {e}"
        else:
            last_err = "listener ports not open yet"
        if time.monotonic() > deadline:
            raise LocalKafkaError(
                f"Kafka nodes {sorted(want)} in {c.dir} not ready after {timeout:.0f}s ({last_err}).\n"
                + _tails(c, sorted(want)))
        time.sleep(0.2)


def stop_nodes(c: Cluster, node_ids: Sequence[int], *, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Signal the nodes, SIGKILL the ones still alive after ``timeout``, remove their pid files."""
    pids = {i: p for i in node_ids if (p := live_pid(c, i)) is not None}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while any(_is_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for i, pid in pids.items():
        if _is_alive(pid):
            log(f"node {i} (pid {pid}) did not stop within {timeout:.0f}s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in pids.values():
        wait_dead(pid, 10)
    for i in node_ids:
        with contextlib.suppress(FileNotFoundError):
            pid_file(c, i).unlink()


def kill_pids(pids: Sequence[int], *, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: cleanup of a start that failed half way."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        if not wait_dead(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_dead(pid, 10)


def wait_dead(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (a child of ours is reaped), False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
