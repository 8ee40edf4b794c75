"""`rstscope edge --pcap` against the real broker: privacy transforms keep raw client addresses off the
topic; a full queue drops, counts and says so in the exit code; metrics are served."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from rstscope.decode import decode_frame
from rstscope.edge.sources import PcapFiles
from tests.edge.test_edge_realnet import _env, read_packets, topology_file

pytestmark = pytest.mark.kafka
PCAP = Path(__file__).resolve().parents[1] / "fixtures" / "http_ok.pcap"


def _topic(tmp_path: Path, bootstrap: str) -> tuple[Path, str]:
    tag = f"p{uuid.uuid4().hex[:8]}"
    path = topology_file(tmp_path, tag)
    r = subprocess.run([sys.executable, "-m", "rstscope.cli", "topics", "apply", "--bootstrap", bootstrap,
                        "--topology", str(path), "--app-id", tag], capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    return path, f"{tag}.packets"


def _edge(bootstrap: str, topo: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rstscope.cli", "edge", "--pcap", str(PCAP), "--bootstrap",
                           bootstrap, "--topology", str(topo), "--server-port", "80", "--sample", "1", "--json",
                           *extra], capture_output=True, text=True, env=_env(), timeout=120)


def _clients() -> set[bytes]:
    out = set()
    for batch in PcapFiles([PCAP]).batches():
        for ts, lt, data in batch:
            rec = decode_frame(ts, lt, data)
            if not isinstance(rec, str) and rec.dport == 80:
                out.add(rec.src)
    return out


@pytest.mark.parametrize("mode", ["truncate:24,48", "hash"])
def test_topic_has_no_raw_client_address(tmp_path: Path, kafka_bootstrap: str, mode: str) -> None:
    from tests.kafka.test_pipeline import read_topic

    topo, topic = _topic(tmp_path, kafka_bootstrap)
    if mode == "hash":
        key = tmp_path / "edge.key"
        key.write_bytes(b"a-secret-edge-key-of-32-bytes!!!")
        mode = f"hash:{key}"
    r = _edge(kafka_bootstrap, topo, "--client-ip", mode)
    assert r.returncode == 0, r.stderr
    clients = _clients()
    raw = read_topic(kafka_bootstrap, topic)
    packets = read_packets(kafka_bootstrap, topic)
    assert packets and len(packets) == orjson.loads(r.stdout.splitlines()[-1])["sent"]
    for key_bytes, value, _p, _o in raw:
        assert not any(c in value or c in (key_bytes or b"") for c in clients)
    assert all(p.src not in clients for p in packets)


def test_full_queue_drops_are_counted_and_exit_3(tmp_path: Path, kafka_bootstrap: str) -> None:
    topo, topic = _topic(tmp_path, kafka_bootstrap)
    # a broker that looks slow: nothing leaves the queue for 2 s, the queue holds 5 records (batches of 1)
    r = _edge(kafka_bootstrap, topo, "--queue-max", "5", "--batch-records", "1", "--max-wait", "0",
              "-X", "linger.ms=2000")
    assert r.returncode == 3, r.stderr
    st = orjson.loads(r.stdout.splitlines()[-1])
    assert st["dropped"]["queue_full"] > 0 and st["lost"] == st["dropped"]["queue_full"]
    assert st["sent"] + st["dropped"]["queue_full"] == st["sampled"] and st["delivery_failures"] == 0
    assert "lost " in r.stderr and len(read_packets(kafka_bootstrap, topic)) == st["sent"]
