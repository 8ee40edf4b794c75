"""QUIC through Kafka (issue 17): the real `rstscope edge` on a capture holding the QUIC bed and TCP
connections, a real broker, the real `rstscope worker`. The QUIC records on the connections topic are
exactly the offline `rstscope quic` records (ids, stages, tags, ends, everything), the TCP records
exactly `rstscope analyze`'s, and every packets message is acked once its records are out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from rstscope.codecs.jsonl import loads
from rstscope.offline import Analyzer, Options
from rstscope.quic.offline import classify_files
from tests.kafka import test_pipeline
from tests.kafka.test_pipeline import READY, read_topic, rstscope, wait_committed_at_end
from tests.quic_mix import SERVERS, TCP_PORTS, mixed_capture

pytestmark = pytest.mark.kafka
# the pipeline fixture (topics unique to the test, edges.idle_s 3, workers stopped at the end)
pipeline = test_pipeline.pipeline
work = test_pipeline.work


def _key(r: Any) -> str:
    return json.dumps(r, sort_keys=True)


def test_quic_and_tcp_through_kafka_equal_offline(pipeline: Any, kafka_bootstrap: str, work: Path) -> None:
    topo_path, topo, app_id, workers = pipeline
    pcap = mixed_capture(work / "mixed.pcap")
    quic_ref, _ = classify_files([pcap], SERVERS, (443,), topo)
    tcp_ref: list[Any] = []
    Analyzer(topo, Options(SERVERS, TCP_PORTS), on_record=tcp_ref.append).run([pcap])
    assert len(quic_ref) == 35 and len(tcp_ref) == 11
    proc, log = workers.start()
    workers.wait_log(log, READY, proc, 90)
    r = rstscope("edge", "--pcap", str(pcap), "--bootstrap", kafka_bootstrap, "--topology", str(topo_path),
                 "--server-ip", ",".join(SERVERS), "--server-port", ",".join(map(str, TCP_PORTS)),
                 "--sample", "1", "--json")
    assert r.returncode == 0, r.stderr
    stats = loads(r.stdout.strip().splitlines()[-1])
    assert stats["quic"] == 399 and stats["dropped"]["quic.server_to_client"] == 200, stats
    assert "quic 399" in r.stderr and stats["delivery_failures"] == 0
    conns = topo.topics["connections"].name
    deadline = time.monotonic() + 40
    got: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        got = [loads(v) for _k, v, _p, _o in read_topic(kafka_bootstrap, conns)]
        if len(got) >= len(quic_ref) + len(tcp_ref):
            break
        time.sleep(0.5)
    quic_got = [g for g in got if g.get("transport") == "quic"]
    tcp_got = [g for g in got if g.get("transport") != "quic"]
    assert sorted(map(_key, quic_got)) == sorted(map(_key, quic_ref)), workers.logs()
    assert sorted(map(_key, tcp_got)) == sorted(map(_key, tcp_ref)), workers.logs()
    # keyed by id like TCP records, and every packets message acked once its records were out
    assert {k.decode() for k, _v, _p, _o in read_topic(kafka_bootstrap, conns) if k} == {g["id"] for g in got}
    wait_committed_at_end(kafka_bootstrap, app_id, topo.topics["packets"].name)
