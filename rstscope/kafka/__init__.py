"""Local Apache Kafka (KRaft) for tests and development: see :mod:`rstscope.kafka.local`."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rstscope.kafka.local import (
        KAFKA_VERSION,
        LocalKafkaError,
        bootstrap_servers,
        ensure_libs,
        kill_node,
        main,
        node_pid,
        running_cluster,
        running_nodes,
        start,
        start_node,
        stop,
        wait_ready,
    )

__all__ = [
    "KAFKA_VERSION",
    "LocalKafkaError",
    "bootstrap_servers",
    "ensure_libs",
    "kill_node",
    "main",
    "node_pid",
    "running_cluster",
    "running_nodes",
    "start",
    "start_node",
    "stop",
    "wait_ready",
]


def __getattr__(name: str) -> Any:
    # lazy, so that ``python -m rstscope.kafka.local`` does not import the module twice
    if name in __all__:
        from rstscope.kafka import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
