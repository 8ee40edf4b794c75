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

CLI (``rstscope local-kafka ...`` and ``python -m rstscope.kafka.local ...`` call :func:`main` with the
arguments after ``local-kafka``)::

    start [--brokers 1|3] [--dir D] [--timeout S]   prints the bootstrap servers on stdout when ready
    stop [--dir D]
    status [--dir D]
    fetch                                           only resolve the jars into the cache

The code lives in small modules: ``jars`` (Maven cache, java), ``cluster`` (ports, ids, server.properties),
``tls`` (CA, keystore, SCRAM users), ``processes`` (pids, launch, readiness, signals), ``lifecycle``
(start/stop a cluster or a node) and ``cli``. This package re-exports their public names, so callers keep
writing ``from rstscope.kafka import local; local.start(...)``.
"""

from rstscope.kafka.local.cli import main
from rstscope.kafka.local.cluster import DEFAULT_HEAP, HOST, Cluster, Node, default_dir
from rstscope.kafka.local.errors import LocalKafkaError
from rstscope.kafka.local.jars import KAFKA_VERSION, cache_root, ensure_libs, find_java
from rstscope.kafka.local.lifecycle import bootstrap_servers, kill_node, running_cluster, start, start_node, stop
from rstscope.kafka.local.processes import log_tail, node_pid, running_nodes, wait_ready
from rstscope.kafka.local.tls import ca_file, secure_bootstrap

__all__ = [
    "DEFAULT_HEAP",
    "HOST",
    "KAFKA_VERSION",
    "Cluster",
    "LocalKafkaError",
    "Node",
    "bootstrap_servers",
    "ca_file",
    "cache_root",
    "default_dir",
    "ensure_libs",
    "find_java",
    "kill_node",
    "log_tail",
    "main",
    "node_pid",
    "running_cluster",
    "running_nodes",
    "secure_bootstrap",
    "start",
    "start_node",
    "stop",
    "wait_ready",
]
