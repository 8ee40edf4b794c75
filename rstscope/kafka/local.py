"""Start and stop a real, local Apache Kafka cluster (KRaft mode) for tests and development.

The broker jars come from Maven Central through ``mvn dependency:copy-dependencies`` (a small pom shipped
in ``rstscope/kafka/data/pom.xml``) into a cache directory, once:
``$RSTSCOPE_KAFKA_CACHE/<version>/libs`` (default ``~/.cache/rstscope/kafka/<version>/libs``).
Only a JDK 17+ (``java``) and Maven (``mvn``) are needed on the machine.

Layout of a cluster directory ``D`` (all state of one cluster lives there)::

    D/cluster.json             ports, ids, version, bootstrap servers
    D/bootstrap.txt            bootstrap servers, one line
    D/log4j2.properties        copy of the packaged log4j2 config
    D/node-<id>/server.properties
    D/node-<id>/data/          log.dirs (KRaft metadata log and topic data)
    D/node-<id>/server.log     broker stdout/stderr (log4j2 writes to stdout)
    D/node-<id>/pid            pid of the running JVM (removed on stop)
    D/tls/                     with ``scram_users``: CA (ca.pem), broker keystore (PKCS12), password files

With ``scram_users={"name": "password"}`` every node gets a second client listener, SASL_SSL (TLS with a
certificate signed by a throw-away CA, made with the JDK's ``keytool``; SAN IP:127.0.0.1) with the
SCRAM-SHA-256 and SCRAM-SHA-512 mechanisms; the users are created through the admin API once the
cluster is up (no password on any command line). Inter-broker and controller traffic stay on the
PLAINTEXT listeners (127.0.0.1 only). ``secure_bootstrap(D)`` and ``ca_file(D)`` give clients what they
need.

Every node is a combined broker+controller listening on 127.0.0.1 only. One node formats its storage with
``--standalone``; three nodes format with ``--initial-controllers`` (dynamic KRaft quorum, KIP-853) and
form a 3-voter quorum.

Python API::

    bootstrap = start(3, Path("/tmp/k"))    # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
    kill_node(Path("/tmp/k"), 2)            # SIGKILL node 2 (signal selectable)
    start_node(Path("/tmp/k"), 2)           # restart it with its data, wait until it is back
    stop(Path("/tmp/k"))                    # SIGTERM, then SIGKILL after a timeout

CLI (``rstscope local-kafka ...`` calls :func:`main` with the arguments after ``local-kafka``)::

    start [--brokers 1|3] [--dir D] [--timeout S]   prints the bootstrap servers on stdout when ready
    stop [--dir D]
    status [--dir D]
    fetch                                           only resolve the jars into the cache
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

KAFKA_VERSION = "4.4.0"
"""Kafka version the pom resolves by default (newest 4.x on Maven Central here; see module docs)."""

DEFAULT_HEAP = "512m"
HOST = "127.0.0.1"

_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
# Popen objects of nodes started by this process, so killed children are reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class LocalKafkaError(RuntimeError):
    """Raised when the jars cannot be resolved or a node does not start or stop."""


def _log(msg: str) -> None:
    print(f"[local-kafka] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------
# jars


def cache_root() -> Path:
    env = os.environ.get("RSTSCOPE_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rstscope" / "kafka"


def _data_file(name: str) -> Path:
    return Path(str(resources.files("rstscope.kafka").joinpath("data", name)))


def ensure_libs(version: str = KAFKA_VERSION, *, quiet: bool = False) -> Path:
    """Return the directory holding the broker's jars, resolving them with Maven the first time.

    Safe against concurrent callers (a file lock guards the download); a complete download is marked by
    ``libs/.complete`` and reused afterwards.
    """
    vdir = cache_root() / version
    libs = vdir / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    vdir.mkdir(parents=True, exist_ok=True)
    with open(vdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError("Maven ('mvn') is not on PATH; it is needed once to fetch the Kafka jars")
        work = Path(tempfile.mkdtemp(prefix="mvn-", dir=vdir))
        try:
            shutil.copy(_data_file("pom.xml"), work / "pom.xml")
            out = work / "libs"
            cmd = [mvn, "-q", "-B", "-f", str(work / "pom.xml"), f"-Dkafka.version={version}",
                   "dependency:copy-dependencies", f"-DoutputDirectory={out}", "-DincludeScope=runtime"]
            if not quiet:
                _log(f"resolving Apache Kafka {version} jars with Maven into {libs} (once) ...")
            t0 = time.monotonic()
            proc = subprocess.run(cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if proc.returncode != 0 or not any(out.glob("kafka_2.13-*.jar")):
                raise LocalKafkaError(
                    f"mvn failed (exit {proc.returncode}) resolving kafka_2.13:{version}:\n"
                    + _tail_text(proc.stdout + proc.stderr, 40))
            if libs.exists():
                shutil.rmtree(libs)
            out.rename(libs)
            marker.write_text(f"{version}\n")
            if not quiet:
                n = len(list(libs.glob("*.jar")))
                _log(f"resolved {n} jars in {time.monotonic() - t0:.1f}s")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return libs


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("no 'java' on PATH (and no JAVA_HOME): Kafka 4.x needs a JDK/JRE 17+")
    return java


# --------------------------------------------------------------------------------------------------------
# cluster description


@dataclass
class Node:
    node_id: int
    port: int  # PLAINTEXT (clients)
    controller_port: int  # CONTROLLER (KRaft)
    directory_id: str  # metadata log directory id, used by --initial-controllers
    secure_port: int = 0  # SASL_SSL (clients), 0: none

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass
class Cluster:
    dir: Path
    version: str
    cluster_id: str
    heap: str
    nodes: list[Node] = field(default_factory=list)
    extra_props: dict[str, str] = field(default_factory=dict)
    die_with_parent: bool = False
    secure: bool = False  # a SASL_SSL listener on every node (see module docs)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    def secure_bootstrap(self) -> str:
        return ",".join(f"{HOST}:{n.secure_port}" for n in self.nodes if n.secure_port)

    @property
    def tls_dir(self) -> Path:
        return self.dir / "tls"

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise LocalKafkaError(f"no node {node_id} in {self.dir} (nodes: {[n.node_id for n in self.nodes]})")

    def node_dir(self, node_id: int) -> Path:
        return self.dir / f"node-{node_id}"

    def save(self) -> None:
        d = asdict(self)
        d["dir"] = str(self.dir)
        d["bootstrap"] = self.bootstrap
        tmp = self.dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(d, indent=2) + "\n")
        tmp.rename(self.dir / "cluster.json")
        (self.dir / "bootstrap.txt").write_text(self.bootstrap + "\n")

    @classmethod
    def load(cls, dir: Path) -> Cluster:
        path = Path(dir) / "cluster.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise LocalKafkaError(f"no local Kafka cluster in {dir} (missing {path})") from None
        d.pop("bootstrap", None)
        d["dir"] = Path(dir)
        d["nodes"] = [Node(**n) for n in d["nodes"]]
        return cls(**d)


def default_dir() -> Path:
    env = os.environ.get("RSTSCOPE_KAFKA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(tempfile.gettempdir()) / f"rstscope-kafka-{os.getuid()}"


def _kafka_uuid() -> str:
    """A random Kafka Uuid in its base64 form (as ``kafka-storage random-uuid`` prints)."""
    while True:
        b = uuid.uuid4().bytes
        s = base64.urlsafe_b64encode(b).rstrip(b"=").decode()
        # Kafka reserves the all-zero/one ids and refuses ids whose string starts with '-'
        if not s.startswith("-") and int.from_bytes(b, "big") > 100:
            return s


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _free_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1, outside the kernel's ephemeral range where possible.

    Outside that range, no client's outgoing connection can take a listener port while its node is down
    (a killed node restarts on the same port).
    """
    lo, hi = _ephemeral_range()
    candidates = [p for p in range(20000, 32768) if not lo <= p <= hi] or list(range(1024, 65536))
    rng = random.SystemRandom()
    ports: list[int] = []
    for _ in range(2000):
        if len(ports) == n:
            return ports
        port = rng.choice(candidates)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        ports.append(port)
    raise LocalKafkaError(f"could not find {n} free ports on {HOST}")


def _server_properties(c: Cluster, node: Node) -> str:
    n = len(c.nodes)
    rf = min(3, n)
    min_isr = 2 if rf >= 3 else 1
    listeners = f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}"
    protocol_map = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    secure: dict[str, str] = {}
    if c.secure:
        listeners += f",SASL_SSL://{HOST}:{node.secure_port}"
        protocol_map += ",SASL_SSL:SASL_SSL"
        store_pw = (c.tls_dir / "store.password").read_text().strip()
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        secure = {
            "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": jaas,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "listener.name.sasl_ssl.ssl.keystore.location": str(c.tls_dir / "broker.p12"),
            "listener.name.sasl_ssl.ssl.keystore.type": "PKCS12",
            "listener.name.sasl_ssl.ssl.keystore.password": store_pw,
            "listener.name.sasl_ssl.ssl.key.password": store_pw,
        }
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "listeners": listeners,
        "advertised.listeners": listeners,
        "listener.security.protocol.map": protocol_map,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.quorum.bootstrap.servers": ",".join(f"{HOST}:{x.controller_port}" for x in c.nodes),
        "log.dirs": str(c.node_dir(node.node_id) / "data"),
        # test defaults
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": str(rf),
        "offsets.topic.replication.factor": str(rf),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        # fence a dead broker after 6 s instead of 9 s (faster failover tests)
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "6000",
        # 2-core machines
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.threads": "1",
        **secure,
    }
    props.update(c.extra_props)
    return "".join(f"{k}={v}\n" for k, v in props.items())


# --------------------------------------------------------------------------------------------------------
# TLS and SCRAM


def _keytool() -> str:
    java = Path(find_java()).resolve()
    kt = java.parent / "keytool"
    if kt.exists():
        return str(kt)
    found = shutil.which("keytool")
    if found is None:
        raise LocalKafkaError("no 'keytool' (JDK) found: it makes the TLS keystore of the SASL_SSL listener")
    return found


def _make_tls(tls: Path) -> None:
    """A throw-away CA and a broker key pair signed by it (SAN IP:127.0.0.1, DNS:localhost), PKCS12."""
    import secrets

    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    pw = secrets.token_hex(16)
    pw_file = tls / "store.password"
    pw_file.write_text(pw + "\n")
    os.chmod(pw_file, 0o600)
    kt = _keytool()
    san = "SAN=ip:127.0.0.1,dns:localhost"
    ca, broker = str(tls / "ca.p12"), str(tls / "broker.p12")
    common = ["-storetype", "PKCS12", "-storepass:file", str(pw_file)]
    steps = [
        ["-genkeypair", "-alias", "ca", "-dname", "CN=rstscope local-kafka CA", "-keyalg", "RSA", "-keysize", "2048",
         "-validity", "30", "-ext", "bc:c", "-keystore", ca, *common],
        ["-exportcert", "-rfc", "-alias", "ca", "-keystore", ca, "-file", str(tls / "ca.pem"), *common],
        ["-genkeypair", "-alias", "broker", "-dname", "CN=127.0.0.1", "-keyalg", "RSA", "-keysize", "2048",
         "-validity", "30", "-ext", san, "-keystore", broker, *common],
        ["-certreq", "-alias", "broker", "-keystore", broker, "-file", str(tls / "broker.csr"), *common],
        ["-gencert", "-alias", "ca", "-keystore", ca, "-infile", str(tls / "broker.csr"), "-outfile",
         str(tls / "broker.crt"), "-rfc", "-validity", "30", "-ext", san, "-ext", "EKU=serverAuth", *common],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(tls / "ca.pem"), "-keystore", broker, *common],
        ["-importcert", "-noprompt", "-alias", "broker", "-file", str(tls / "broker.crt"), "-keystore", broker,
         *common],
    ]
    for args in steps:
        p = subprocess.run([kt, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if p.returncode != 0:
            raise LocalKafkaError(f"keytool {args[0]} failed (exit {p.returncode}):\n"
                                  f"{_tail_text(p.stdout + p.stderr, 20)}")
    for f in tls.iterdir():
        os.chmod(f, 0o600 if f.suffix in (".p12", ".password") else 0o644)


def _add_scram_users(bootstrap: str, users: dict[str, str], timeout: float = 30.0) -> None:
    """Create (or update) SCRAM-SHA-256 and -512 credentials through the admin API (PLAINTEXT listener)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    mechs = (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)
    ups: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(name, ScramCredentialInfo(mech, 8192), pw.encode())
        for name, pw in users.items() for mech in mechs]
    deadline = time.monotonic() + timeout
    while True:
        try:
            for m in mechs:  # a user may be altered only once per request
                batch = [u for u in ups if u.scram_credential_info.mechanism == m]  # type: ignore[attr-defined]
                for f in admin.alter_user_scram_credentials(batch, request_timeout=10).values():
                    f.result()
            return
        except Exception as e:  # the message names users, never passwords
            if time.monotonic() > deadline:
                raise LocalKafkaError(f"could not create SCRAM users {sorted(users)}: {e}") from None
            time.sleep(0.5)


def secure_bootstrap(dir: Path | None = None) -> str:
    """Bootstrap servers of the SASL_SSL listeners ('' if the cluster has none)."""
    return Cluster.load(Path(dir if dir is not None else default_dir())).secure_bootstrap


def ca_file(dir: Path | None = None) -> Path:
    """The PEM CA certificate clients of the SASL_SSL listener trust."""
    return Cluster.load(Path(dir if dir is not None else default_dir())).tls_dir / "ca.pem"


# --------------------------------------------------------------------------------------------------------
# processes


def _pid_file(c: Cluster, node_id: int) -> Path:
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
    return _node_pid(c, node_id)


def _node_pid(c: Cluster, node_id: int) -> int | None:
    try:
        pid = int(_pid_file(c, node_id).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _is_our_node(pid, c, node_id) else None


def running_nodes(dir: Path) -> list[int]:
    c = Cluster.load(dir)
    return [n.node_id for n in c.nodes if _node_pid(c, n.node_id) is not None]


def log_tail(dir: Path, node_id: int, lines: int = 40) -> str:
    path = Path(dir) / f"node-{node_id}" / "server.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return f"(no {path})"
    return _tail_text(text, lines)


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


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


def _format(c: Cluster, libs: Path, nodes: Iterable[Node]) -> None:
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
            text = _tail_text(out.decode(errors="replace"), 30)
            errors.append(f"node {node.node_id}: exit {p.returncode}\n{text}")
    if errors:
        raise LocalKafkaError("kafka-storage format failed:\n" + "\n".join(errors))


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _launch(c: Cluster, libs: Path, node: Node) -> int:
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
    _pid_file(c, node.node_id).write_text(f"{p.pid}\n")
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
    _wait_ready(c, set(node_ids) if node_ids is not None else {n.node_id for n in c.nodes}, timeout)


def _tails(c: Cluster, node_ids: Iterable[int]) -> str:
    return "\n".join(f"--- tail of {c.node_dir(i)}/server.log ---\n{log_tail(c.dir, i)}" for i in node_ids)


def _wait_ready(c: Cluster, want: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_err = ""
    while True:
        dead = [i for i in sorted(want) if _node_pid(c, i) is None]
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


# --------------------------------------------------------------------------------------------------------
# public API


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
        alive = [n.node_id for n in old.nodes if _node_pid(old, n.node_id) is not None]
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
    ports = _free_ports(k * brokers)
    c = Cluster(dir=dir, version=version, cluster_id=_kafka_uuid(),
                heap=heap or os.environ.get("RSTSCOPE_KAFKA_HEAP", DEFAULT_HEAP),
                nodes=[Node(node_id=i + 1, port=ports[k * i], controller_port=ports[k * i + 1],
                            directory_id=_kafka_uuid(), secure_port=ports[k * i + 2] if secure else 0)
                       for i in range(brokers)],
                extra_props=dict(extra_props or {}), die_with_parent=die_with_parent, secure=secure)
    if secure:
        _make_tls(c.tls_dir)
    shutil.copy(_data_file("log4j2.properties"), dir / "log4j2.properties")
    for n in c.nodes:
        nd = c.node_dir(n.node_id)
        nd.mkdir(parents=True, exist_ok=True)
        (nd / "server.properties").write_text(_server_properties(c, n))
    c.save()
    _log(f"formatting {brokers} KRaft node(s) in {dir} (Kafka {version}) ...")
    _format(c, libs, c.nodes)
    pids: list[int] = []
    try:
        for n in c.nodes:
            pids.append(_launch(c, libs, n))
        _log(f"started node(s) {[n.node_id for n in c.nodes]}, waiting for the brokers ...")
        _wait_ready(c, {n.node_id for n in c.nodes}, timeout)
        if scram_users:
            _add_scram_users(c.bootstrap, scram_users)
    except BaseException:
        _kill_pids(pids, timeout=10)
        for n in c.nodes:
            with contextlib.suppress(FileNotFoundError):
                _pid_file(c, n.node_id).unlink()
        raise
    _log(f"ready in {time.monotonic() - t0:.1f}s: {c.bootstrap}")
    if secure:
        _log(f"SASL_SSL (SCRAM-SHA-256/512, users {sorted(scram_users or {})}): {c.secure_bootstrap}, "
             f"CA {c.tls_dir / 'ca.pem'}")
    return c.bootstrap


def bootstrap_servers(dir: Path | None = None) -> str:
    return Cluster.load(Path(dir if dir is not None else default_dir())).bootstrap


def stop(dir: Path | None = None, *, timeout: float = 20.0) -> None:
    """Stop every node of the cluster in ``dir``: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Works from any process (uses the pid files). Data stays in ``dir``.
    """
    dir = Path(dir if dir is not None else default_dir())
    try:
        c = Cluster.load(dir)
    except LocalKafkaError:
        _log(f"no cluster in {dir}; nothing to stop")
        return
    _stop_nodes(c, [n.node_id for n in c.nodes], timeout=timeout)


def _stop_nodes(c: Cluster, node_ids: Sequence[int], *, timeout: float, sig: int = signal.SIGTERM) -> None:
    pids = {i: p for i in node_ids if (p := _node_pid(c, i)) is not None}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while any(_is_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for i, pid in pids.items():
        if _is_alive(pid):
            _log(f"node {i} (pid {pid}) did not stop within {timeout:.0f}s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in pids.values():
        _wait_dead(pid, 10)
    for i in node_ids:
        with contextlib.suppress(FileNotFoundError):
            _pid_file(c, i).unlink()


def _kill_pids(pids: Sequence[int], *, timeout: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        if not _wait_dead(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_dead(pid, 10)


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_node(dir: Path, node_id: int, sig: int = signal.SIGKILL, *, wait: bool = True,
              timeout: float = 30.0) -> None:
    """Send ``sig`` to one node (default SIGKILL: a crash). With ``wait``, return once it has exited;
    a node that ignores SIGTERM beyond ``timeout`` is SIGKILLed."""
    c = Cluster.load(dir)
    pid = _node_pid(c, node_id)
    if pid is None:
        raise LocalKafkaError(f"node {node_id} in {dir} is not running")
    os.kill(pid, sig)
    if not wait:
        return
    if not _wait_dead(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_dead(pid, 10)
    with contextlib.suppress(FileNotFoundError):
        _pid_file(c, node_id).unlink()


def start_node(dir: Path, node_id: int, *, wait: bool = True, timeout: float = 90.0) -> None:
    """(Re)start one stopped node with its existing data and config; with ``wait``, return once it is
    listed as a broker again."""
    c = Cluster.load(dir)
    if _node_pid(c, node_id) is not None:
        raise LocalKafkaError(f"node {node_id} in {dir} is already running")
    libs = ensure_libs(c.version)
    _launch(c, libs, c.node(node_id))
    if wait:
        _wait_ready(c, {node_id}, timeout)


@contextlib.contextmanager
def running_cluster(brokers: int, dir: Path, **kwargs: Any) -> Iterator[str]:
    """``with running_cluster(3, tmp) as bootstrap: ...``: start, yield bootstrap servers, always stop."""
    try:
        yield start(brokers, dir, **kwargs)
    finally:
        stop(dir)


# --------------------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rstscope local-kafka",
                                 description="Run a local Apache Kafka cluster (KRaft, 127.0.0.1 only).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start", help="start a fresh cluster; prints bootstrap servers when ready")
    p_start.add_argument("--brokers", type=int, choices=(1, 3), default=1)
    p_start.add_argument("--dir", type=Path, default=None,
                         help=f"cluster directory (default $RSTSCOPE_KAFKA_DIR or {default_dir()})")
    p_start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    p_start.add_argument("--heap", default=None, help=f"JVM max heap per node (default {DEFAULT_HEAP})")
    p_start.add_argument("--version", default=KAFKA_VERSION, help=argparse.SUPPRESS)
    p_start.add_argument("--scram-user", default=None, metavar="NAME",
                         help="also listen with TLS + SASL/SCRAM; the user's password is read from "
                              "$RSTSCOPE_KAFKA_SCRAM_PASSWORD or generated into DIR/tls/NAME.password")
    p_stop = sub.add_parser("stop", help="stop the cluster (SIGTERM, then SIGKILL)")
    p_stop.add_argument("--dir", type=Path, default=None)
    p_stop.add_argument("--timeout", type=float, default=20.0)
    p_status = sub.add_parser("status", help="print bootstrap servers and running nodes")
    p_status.add_argument("--dir", type=Path, default=None)
    sub.add_parser("fetch", help="only resolve the broker jars into the cache")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "start":
            users = None
            if args.scram_user:
                import secrets

                users = {args.scram_user: os.environ.get("RSTSCOPE_KAFKA_SCRAM_PASSWORD") or secrets.token_hex(16)}
            d = Path(args.dir if args.dir is not None else default_dir()).absolute()
            print(start(args.brokers, d, version=args.version, heap=args.heap, timeout=args.timeout,
                        scram_users=users), flush=True)
            if users:
                pw_file = d / "tls" / f"{args.scram_user}.password"
                pw_file.write_text(users[args.scram_user] + "\n")
                os.chmod(pw_file, 0o600)
                _log(f"password of {args.scram_user}: {pw_file}")
        elif args.cmd == "stop":
            stop(args.dir, timeout=args.timeout)
        elif args.cmd == "status":
            d = Path(args.dir if args.dir is not None else default_dir())
            c = Cluster.load(d)
            alive = running_nodes(d)
            print(c.bootstrap)
            print(f"running nodes: {alive} of {[n.node_id for n in c.nodes]}", file=sys.stderr)
            return 0 if alive else 3
        elif args.cmd == "fetch":
            print(ensure_libs())
    except LocalKafkaError as e:
        print(f"local-kafka: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno == errno.ENOENT:
            print(f"local-kafka: error: {e}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
