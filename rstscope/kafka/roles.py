"""Where Kafka clients connect and which topic serves each role: shared by the edge, the API sink and the workers.

It sits in the Kafka layer, below :mod:`rstscope.streams`, so that the edge producer and the API need not
import the Faust worker package to find the broker and their topic.
"""

from __future__ import annotations

import os

from rstscope.config import TopicSpec, Topology, TopologyError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
ROLES = ("packets", "connections", "rollups", "dead_letters", "alerts")


def default_bootstrap() -> str:
    """$KAFKA_BOOTSTRAP_SERVERS, else ``bootstrap.servers`` of $RSTSCOPE_KAFKA_CONFIG, else the default."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        return env
    from rstscope.kafka import security

    try:
        return security.load().bootstrap or DEFAULT_BOOTSTRAP
    except security.SecurityConfigError:
        return DEFAULT_BOOTSTRAP


def role_spec(topology: Topology, role: str) -> TopicSpec:
    """The topic of ``role`` (one of :data:`ROLES`) in the topology; a missing one is a TopologyError."""
    try:
        return topology.topics[role]
    except KeyError:
        raise TopologyError(f"topology {topology.source}: no topics.{role}") from None
