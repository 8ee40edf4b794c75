"""`rstscope topics apply|check`: the topics of topology.yaml (and the workers' internal ones) on a broker.

Partition counts are part of the design, not a tuning knob: all packets of a connection must share a
packets partition, and the rollup state is co-partitioned with its input. So a partition mismatch is
an error to fix by hand (re-create the topic), never something apply "repairs" silently.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rstscope.config import TopicSpec, Topology, TopologyError, load
from rstscope.kafka.roles import DEFAULT_BOOTSTRAP as DEFAULT_BOOTSTRAP  # moved down a layer; re-exported
from rstscope.kafka.roles import ROLES as ROLES
from rstscope.kafka.roles import default_bootstrap as default_bootstrap
from rstscope.kafka.roles import role_spec as role_spec

DEFAULT_APP_ID = "rstscope"
# Faust names a table's changelog "<app id>-<table name>-changelog".
RECORDS_TABLE = "rollup-records"


def internal_specs(topology: Topology, app_id: str) -> dict[str, TopicSpec]:
    """The workers' own topics: the rollup input (connections re-keyed by bucket) and its table changelog.

    Both have the rollups topic's partition count: the table is co-partitioned with its input.
    """
    conn = role_spec(topology, "connections")
    n = role_spec(topology, "rollups").partitions
    return {
        "rollup_input": TopicSpec(f"{app_id}-rollup-input", n, conn.replication, conn.retention_ms, "delete"),
        "rollup_records": TopicSpec(f"{app_id}-{RECORDS_TABLE}-changelog", n, conn.replication, None, "compact"),
    }


def all_specs(topology: Topology, app_id: str | None) -> list[TopicSpec]:
    specs = [role_spec(topology, r) for r in ROLES]
    if app_id:
        specs += list(internal_specs(topology, app_id).values())
    return specs


def wanted_config(spec: TopicSpec) -> dict[str, str]:
    conf = {"cleanup.policy": spec.cleanup_policy}
    if spec.retention_ms is not None:
        conf["retention.ms"] = str(spec.retention_ms)
        if spec.cleanup_policy == "delete":
            # Records carry event time (the packet's) as their Kafka timestamp. Time retention must not
            # run on it: a capture older than retention.ms would be deleted as it is written, before a
            # restarted worker could replay it (found by tests/faults: offset out of range -> lost
            # connections). The broker's append time bounds retention; event time stays in the value.
            conf["message.timestamp.type"] = "LogAppendTime"
    return conf


@dataclass
class Problem:
    topic: str
    what: str
    fixable: bool  # apply can fix it (a missing topic or a config value)

    def __str__(self) -> str:
        return f"{self.topic}: {self.what}"


def _admin(bootstrap: str):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    from rstscope.kafka import security

    # TLS / SASL settings from the environment or $RSTSCOPE_KAFKA_CONFIG (never printed)
    return AdminClient({"bootstrap.servers": bootstrap, **security.load().librdkafka()})


def inspect(bootstrap: str, specs: list[TopicSpec], timeout: float = 15.0) -> list[Problem]:
    """Compare the broker's topics with the specs: missing topics, partitions, replication, configs."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import ConfigResource, ResourceType  # type: ignore[attr-defined]

    admin = _admin(bootstrap)
    md = admin.list_topics(timeout=timeout)
    problems: list[Problem] = []
    present: list[TopicSpec] = []
    for spec in specs:
        t = md.topics.get(spec.name)
        if t is None or t.error is not None:
            problems.append(Problem(spec.name, "missing", True))
            continue
        present.append(spec)
        if len(t.partitions) != spec.partitions:
            problems.append(Problem(spec.name, f"has {len(t.partitions)} partitions, topology says "
                                               f"{spec.partitions} (re-create the topic; keys would move)", False))
        rf = min((len(p.replicas) for p in t.partitions.values()), default=0)
        if rf != spec.replication:
            problems.append(Problem(spec.name, f"replication factor {rf}, topology says {spec.replication}", False))
    if present:
        res = [ConfigResource(ResourceType.TOPIC, s.name) for s in present]
        futs = admin.describe_configs(res, request_timeout=timeout)
        for spec, r in zip(present, res, strict=True):
            try:
                entries = futs[r].result(timeout)
            except KafkaException as e:
                # listed by one broker, unknown to the one asked: metadata of a topic created a moment ago
                # has not reached every broker yet (seen on a loaded 3-node cluster). apply() waits for it.
                err = e.args[0] if e.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    problems.append(Problem(spec.name, "missing", True))
                    continue
                raise
            for k, v in wanted_config(spec).items():
                have = entries[k].value if k in entries else None
                if have != v:
                    problems.append(Problem(spec.name, f"{k}={have}, topology says {v}", True))
    return problems


def apply(bootstrap: str, specs: list[TopicSpec], timeout: float = 30.0) -> list[Problem]:
    """Create missing topics and set their configs; returns the problems left (partitions, replication)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewTopic,
        ResourceType,
    )

    admin = _admin(bootstrap)
    problems = inspect(bootstrap, specs, timeout)
    by_name = {s.name: s for s in specs}
    missing = [by_name[p.topic] for p in problems if p.what == "missing"]
    if missing:
        futs = admin.create_topics([NewTopic(s.name, s.partitions, s.replication, config=wanted_config(s))
                                    for s in missing], operation_timeout=timeout)
        for name, f in futs.items():
            f.result(timeout)
            print(f"created {name}", file=sys.stderr)
    to_alter = {p.topic for p in problems if p.fixable and p.what != "missing"}
    for name in sorted(to_alter):
        spec = by_name[name]
        res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in wanted_config(spec).items()])
        admin.incremental_alter_configs([res])[res].result(timeout)
        print(f"updated config of {name}", file=sys.stderr)
    _wait_leaders(admin, [s.name for s in missing], timeout)
    # metadata reaches every broker a little later than the create returns (seen on a loaded 3-node
    # cluster): a just-created topic can still look missing to a broker that answers the next request
    deadline = time.monotonic() + timeout
    while True:
        left = inspect(bootstrap, specs, timeout)
        if not any(p.what == "missing" for p in left) or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _wait_leaders(admin, names: list[str], timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while names and time.monotonic() < deadline:
        md = admin.list_topics(timeout=5)
        if all(n in md.topics and md.topics[n].error is None and md.topics[n].partitions
               and all(p.leader >= 0 for p in md.topics[n].partitions.values()) for n in names):
            return
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rstscope topics", description=__doc__)
    p.add_argument("action", choices=("apply", "check"))
    p.add_argument("--bootstrap", default=None, help="bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topology", type=Path, default=None, help="topology.yaml to use")
    p.add_argument("--app-id", default=DEFAULT_APP_ID,
                   help="worker app id: its internal topics are handled too ('' for none)")
    args = p.parse_args(argv)
    bootstrap = args.bootstrap or default_bootstrap()
    try:
        specs = all_specs(load(args.topology), args.app_id)
        problems = apply(bootstrap, specs) if args.action == "apply" else inspect(bootstrap, specs)
    except (TopologyError, ValueError) as e:  # SecurityConfigError is a ValueError without secrets
        print(f"rstscope topics: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # confluent_kafka raises KafkaException with the broker's reason
        print(f"rstscope topics: {bootstrap}: {e}", file=sys.stderr)
        return 2
    for prob in problems:
        print(f"rstscope topics: MISMATCH {prob}", file=sys.stderr)
    if problems:
        return 1
    print(f"rstscope topics: {len(specs)} topics match the topology", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
