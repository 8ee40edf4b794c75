"""The Faust app: topics, the rollup table and the two agents, built from topology.yaml at start-up.

Transport is ``kafka://`` (aiokafka): the confluent transport cannot run tables (NOTES-faust.md).
Values are raw bytes (msgpack packets in, JSON records out), decoded by hand in the agents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstscope.config import Topology
from rstscope.geo import GeoDB
from rstscope.kafka.security import ClientSecurity
from rstscope.streams.connection_agent import ConnectionStage
from rstscope.streams.connection_agent import build as build_connections
from rstscope.streams.faust_internals import check_versions, gapless_app_class, mend_closed_transport_writes
from rstscope.streams.offsets import RESEEK_S, OffsetGuard, periodic, watermark_reader
from rstscope.streams.rollup_agent import RollupStage
from rstscope.streams.rollup_agent import build as build_rollups
from rstscope.streams.topics import RECORDS_TABLE, internal_specs, role_spec


@dataclass
class Settings:
    bootstrap: str
    topology: Topology
    app_id: str = "rstscope"
    datadir: Path = Path("rstscope-worker-data")
    geo: GeoDB | None = None
    session_timeout_s: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)
    security: ClientSecurity | None = None  # TLS / SASL (rstscope.kafka.security); None: PLAINTEXT


@dataclass
class Pipeline:
    app: Any
    connections: ConnectionStage
    rollups: RollupStage


def broker_url(bootstrap: str) -> str:
    return ";".join(f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip())


def make_app(s: Settings) -> Pipeline:
    check_versions()
    mend_closed_transport_writes()
    topo = s.topology
    creds = s.security.faust_credentials() if s.security is not None else None
    if creds is not None:
        s.extra.setdefault("broker_credentials", creds)
    app = gapless_app_class()(
        s.app_id,
        broker=broker_url(s.bootstrap),
        store="memory://",
        datadir=str(s.datadir),
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=max(1.0, s.session_timeout_s / 6),
        # manual acks hold messages until their connection ends: never wait for them on rebalance
        stream_wait_empty=False,
        topic_partitions=role_spec(topo, "packets").partitions,
        # one produce request per few ms, not per record: a record per connection goes out to two
        # topics, and aiokafka with linger 0 sends a request per send (bench/bench_pipeline.py)
        producer_linger=0.02,
        **s.extra,
    )

    def topic(role: str) -> Any:
        spec = role_spec(topo, role)
        return app.topic(spec.name, key_type=bytes, value_type=bytes, partitions=spec.partitions,
                         replicas=spec.replication)

    packets, connections, rollups, dead = (topic(r) for r in ("packets", "connections", "rollups", "dead_letters"))
    inner = internal_specs(topo, s.app_id)["rollup_input"]
    rollup_input = app.topic(inner.name, key_type=bytes, value_type=bytes, partitions=inner.partitions,
                             replicas=inner.replication)
    records = app.Table(RECORDS_TABLE, key_type=str, value_type=bytes, partitions=inner.partitions,
                        default=None)

    cstage = ConnectionStage(topo, s.geo)
    rstage = RollupStage(topo.window.size_s, topo.rollup.retention_s)
    marks = watermark_reader(s.bootstrap, s.security.librdkafka() if s.security is not None else None)
    guards = [OffsetGuard(app, cstage.counters, "connections", packets.get_topic_name(), marks),
              OffsetGuard(app, rstage.counters, "rollup", inner.name, marks)]
    build_connections(app, cstage, packets, connections, rollup_input, dead, guards[0])
    build_rollups(app, rstage, rollup_input, rollups, dead, records, guards[1])

    @app.on_partitions_revoked.connect
    async def on_revoked(*args: Any, **kwargs: Any) -> None:
        revoked = kwargs.get("revoked") or next((a for a in args if isinstance(a, (set, frozenset))), set())
        cstage.revoke(tp.partition for tp in revoked if tp.topic == packets.get_topic_name())
        rstage.revoke(tp.partition for tp in revoked if tp.topic == inner.name)
        for guard in guards:
            guard.revoke(revoked)

    @periodic(app, RESEEK_S, cstage.counters, "offset-reseek")
    async def reseek() -> None:
        for guard in guards:
            await guard.tick()

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def report() -> None:
        c = cstage.counters + rstage.counters
        if c:
            app.log.info("rstscope stats: %s held=%d", dict(sorted(c.items())), cstage.held())

    return Pipeline(app, cstage, rstage)
