"""The subscriber example of docs/streaming.md runs against a real broker and reads rows as a table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from rstscope.codecs.jsonl import dumps
from rstscope.core.rollup import Rollup, row_key_text

pytestmark = pytest.mark.kafka

DOC = Path(__file__).resolve().parents[2] / "docs" / "streaming.md"


def example_code() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- subscriber-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/streaming.md lost its subscriber example"
    return m.group(1)


def record(i: int, stage: str, bucket: int) -> dict[str, object]:
    return {"id": f"{i:016x}", "window_start": bucket, "stage": stage, "tags": [], "signature": None,
            "country": "DE", "asn": 3320}


def test_subscriber_example_reads_latest_rows(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"t{uuid.uuid4().hex[:8]}.rollups"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 4, 1, config={"cleanup.policy": "compact"})])[topic].result(30)
    rollup = Rollup(900)
    prod = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    stages = ["post_syn", "post_ack", "no_match", "no_match", "later_in_flow"]
    for i, stage in enumerate(stages):  # every change is an upsert: older versions precede the latest
        for key in rollup.add(record(i, stage, 1795813200 if i < 4 else 1795814100)):
            prod.produce(topic, dumps(rollup.row(key)), row_key_text(key).encode())
    assert prod.flush(30) == 0
    script = tmp_path / "subscriber.py"
    script.write_text(example_code())
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, RSTSCOPE_ROLLUPS_TOPIC=topic)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    want = [{"bucket_start": row["bucket_start"], "total": row["total"], "shares": row["shares"]}
            for row in rollup.rows() if row["dimension"] == "world"]
    assert got == want
    assert got[0]["total"] == 4 and got[0]["shares"]["no_match"] == 50.0
