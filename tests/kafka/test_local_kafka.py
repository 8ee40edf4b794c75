"""The local Kafka launcher against real brokers: confluent-kafka, aiokafka, Faust, failover, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from rstscope.kafka import local

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def _create_topic(bootstrap: str, name: str, partitions: int, rf: int,
                  config: dict[str, str] | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fut = admin.create_topics([NewTopic(name, partitions, rf, config=config or {})], operation_timeout=30)
    fut[name].result(timeout=60)
    # wait until every partition has a leader in the metadata the clients will see
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5).topics[name]
        if md.error is None and len(md.partitions) == partitions and all(
            p.leader >= 0 for p in md.partitions.values()
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {name} has no leaders after 30s")


def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]], **conf: object) -> list[Message]:
    delivered: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered.append(msg)

    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5,
                         **conf})
    for key, value in items:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(90)
    assert left == 0, f"{left} messages not delivered"
    assert not errors, errors[:5]
    return delivered


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# ------------------------------------------------------------------------------------------------------


async def test_confluent_produce_aiokafka_consume_1000(kafka_bootstrap: str) -> None:
    topic = f"t-roundtrip-{uuid.uuid4().hex[:8]}"
    _create_topic(kafka_bootstrap, topic, partitions=3, rf=1)
    items = [(f"key-{i % 50}".encode(), f"value-{i}".encode()) for i in range(1000)]
    delivered = _produce(kafka_bootstrap, topic, items, acks="all")
    assert len(delivered) == 1000
    partition_of = {m.key(): m.partition() for m in delivered}

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                session_timeout_ms=6000, heartbeat_interval_ms=1000)
    await consumer.start()
    got: list[tuple[bytes, bytes, int]] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < 1000 and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got.extend((r.key, r.value, r.partition) for r in records)
        await consumer.commit()
        committed = [await consumer.committed(TopicPartition(topic, p)) for p in range(3)]
    finally:
        await consumer.stop()

    assert sorted(v for _, v, _ in got) == sorted(v for _, v in items)
    # librdkafka's murmur2_random and aiokafka/Java's murmur2 put a key on the same partition
    partitioner = DefaultPartitioner()
    for key, _, partition in got:
        assert partition == partition_of[key] == partitioner(key, [0, 1, 2], [0, 1, 2])
    assert sum(c or 0 for c in committed) == 1000


async def test_three_nodes_acks_all_survives_killed_node(kafka_cluster3) -> None:  # type: ignore[no-untyped-def]
    bootstrap = kafka_cluster3.bootstrap
    topic = f"t-failover-{uuid.uuid4().hex[:8]}"
    _create_topic(bootstrap, topic, partitions=3, rf=3, config={"min.insync.replicas": "2"})
    conf = {"acks": "all", "enable.idempotence": True, "message.timeout.ms": 60000}
    _produce(bootstrap, topic, [(f"k{i}".encode(), f"before-{i}".encode()) for i in range(300)], **conf)

    admin = AdminClient({"bootstrap.servers": bootstrap})
    leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    kafka_cluster3.kill_node(leader, signal.SIGKILL)
    assert leader not in kafka_cluster3.running_nodes()

    t0 = time.monotonic()
    _produce(bootstrap, topic, [(f"k{i}".encode(), f"during-{i}".encode()) for i in range(300)], **conf)
    print(f"300 acks=all messages with node {leader} dead delivered in {time.monotonic() - t0:.1f}s")
    new_leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    assert new_leader != leader

    kafka_cluster3.start_node(leader)
    deadline = time.monotonic() + 90
    while True:
        parts = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
        if all(len(p.isrs) == 3 for p in parts):
            break
        assert time.monotonic() < deadline, f"ISR not restored: {[p.isrs for p in parts]}"
        time.sleep(0.5)

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(values) < 600 and time.monotonic() < deadline:
            for m in consumer.consume(500, timeout=0.5):
                if m.error() is None:
                    values.append(m.value())
    finally:
        consumer.close()
    assert len(values) == 600 and len(set(values)) == 600  # idempotent producer: no duplicates


def test_cli_start_and_stop_from_another_process(tmp_path: Path) -> None:
    d = tmp_path / "cli"
    cmd = [sys.executable, "-m", "rstscope.kafka.local"]
    proc = subprocess.run([*cmd, "start", "--dir", str(d)], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    bootstrap = proc.stdout.strip()
    assert bootstrap.startswith("127.0.0.1:") and "\n" not in bootstrap
    pid = local.node_pid(d, 1)
    assert pid is not None
    try:
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert set(md.brokers) == {1}
        status = subprocess.run([*cmd, "status", "--dir", str(d)], capture_output=True, text=True, env=_env())
        assert status.returncode == 0 and status.stdout.strip() == bootstrap
    finally:
        stopped = subprocess.run([*cmd, "stop", "--dir", str(d)], capture_output=True, text=True, env=_env(),
                                 timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(f"/proc/{pid}").exists() or local.node_pid(d, 1) is None
    assert local.running_nodes(d) == []


def test_start_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(local.LocalKafkaError) as err:
        local.start(1, tmp_path / "bad", extra_props={"num.io.threads": "not-a-number"}, timeout=60)
    assert "num.io.threads" in str(err.value)
    assert local.running_nodes(tmp_path / "bad") == []


FAUST_APP = """
import faust

app = faust.App({app_id!r}, broker={broker!r}, store="memory://", topic_partitions=2,
                topic_replication_factor=1, broker_session_timeout=6, web_enabled=False)
source = app.topic({topic!r}, key_type=bytes, value_type=bytes, key_serializer="raw",
                   value_serializer="raw", partitions=2)
counts = app.Table("counts", default=int, partitions=2)


@app.agent(source)
async def count(stream):
    async for key, value in stream.items():
        counts[key.decode()] += 1
        print(f"TOTAL={{sum(counts.values())}};", flush=True)
"""


def _start_faust(tmp_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "faust", "-A", "faustapp", "worker", "-l", "info"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_log(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"worker exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{needle!r} not seen in {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _stop_faust(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_faust_agent_and_table_against_local_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    """aiokafka through Faust works against this broker: consume, table changelog, commit, recovery."""
    app_id = f"faustsmoke-{uuid.uuid4().hex[:8]}"
    topic = f"{app_id}-in"
    (tmp_path / "faustapp.py").write_text(
        textwrap.dedent(FAUST_APP.format(app_id=app_id, broker=f"kafka://{kafka_bootstrap}", topic=topic)))
    _create_topic(kafka_bootstrap, topic, partitions=2, rf=1)
    _create_topic(kafka_bootstrap, f"{app_id}-counts-changelog", partitions=2, rf=1)
    log = tmp_path / "worker-1.log"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def committed() -> int:
        res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(app_id)])[app_id].result(10)
        return sum(max(tp.offset, 0) for tp in res.topic_partitions if tp.topic == topic)

    worker = _start_faust(tmp_path, log)
    try:
        _wait_log(log, "Worker ready", worker, 90)
        _produce(kafka_bootstrap, topic, [(f"k{i % 7}".encode(), b"x") for i in range(300)])
        _wait_log(log, "TOTAL=300;", worker, 60)
        deadline = time.monotonic() + 30
        while committed() < 300:
            assert time.monotonic() < deadline, "Faust did not commit offsets"
            time.sleep(0.5)
    finally:
        _stop_faust(worker)

    # a new worker restores the table from the changelog and resumes from the committed offsets
    log = tmp_path / "worker-2.log"
    worker = _start_faust(tmp_path, log)
    try:
        _wait_log(log, "Worker ready", worker, 90)
        _produce(kafka_bootstrap, topic, [(f"k{i % 7}".encode(), b"x") for i in range(100)])
        _wait_log(log, "TOTAL=400;", worker, 60)
    finally:
        _stop_faust(worker)
    text = (tmp_path / "worker-1.log").read_text() + log.read_text()
    assert "UnsupportedVersion" not in text
    assert "TOTAL=401;" not in text
