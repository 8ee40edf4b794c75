"""What a local cluster is, on disk: nodes and their ports (``cluster.json``), and each node's server.properties.

Every process that manages the cluster (the CLI's ``start``, a later ``stop``) reads this description, so
it is the one place that says which ports and ids a cluster has.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rstscope.kafka.local.errors import LocalKafkaError

DEFAULT_HEAP = "512m"
HOST = "127.0.0.1"

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
    """The cluster directory when none is given: ``$RSTSCOPE_KAFKA_DIR``, else one per user in /tmp."""
    env = os.environ.get("RSTSCOPE_KAFKA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(tempfile.gettempdir()) / f"rstscope-kafka-{os.getuid()}"


def kafka_uuid() -> str:
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


def free_ports(n: int) -> list[int]:
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


def server_properties(c: Cluster, node: Node) -> str:
    """One node's server.properties: KRaft combined mode, 127.0.0.1 only, defaults for tests."""
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
