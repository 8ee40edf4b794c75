"""No payload bytes leave the edge: real TCP traffic (network namespaces, tcpdump with a full snap
length) whose payloads carry a marker goes through `rstscope edge` -> Kafka -> `rstscope worker`; every
byte of every topic of the pipeline, every log and every file the processes wrote is searched for the
marker (as text, hex and base64).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.netns import capture_client_run

from .harness import READY, Run

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

CLIENT = r"""
import socket, sys, time, urllib.error, urllib.request
marker = sys.argv[1]
for i in range(12):
    body = (marker * 20).encode()
    req = urllib.request.Request(f"http://10.97.0.2/{marker}/{i}", data=body, headers={"X-M": marker})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
    except urllib.error.HTTPError as e:  # http.server answers a POST with 501: the error holds the
        e.close()  # connection; close it now, not whenever the garbage collector gets to it (seen in CI)
    except Exception:
        pass
    s = socket.create_connection(("10.97.0.2", 80))
    s.send(marker.encode() * 3)
    time.sleep(0.05)
    s.close()
"""


def make_capture(path: Path, marker: str) -> Path:
    # http.server serves the input directory: the marker files written there are what GETs fetch
    return capture_client_run(path, "rsf", CLIENT, marker, timeout=90, server_cwd=path.parent)


def check_counts(pcap: Path) -> int:
    """What the client did, by its own packets (no end marker: every connection ended): 12 POSTs with
    two data packets each, closed with a FIN or, when the server's response was not read yet, an RST
    (None or Later); 12 single sends closed before the server's answer came, which the client then
    resets (FIN and RST after one data packet: Post-PSH). A POST can also lose a race: http.server answers
    501 after the headers and closes, the body then meets its RST, and the client, reset, sends nothing
    more: that connection ends at the cutoff, within seconds of the capture's end (incomplete; seen in CI).
    Returns how many connections the method classifies (a raced one is excluded)."""
    from rstscope.config import load
    from rstscope.offline import Analyzer, Options

    from .synth import SERVER_IP

    s = Analyzer(load(), Options([SERVER_IP], [80])).run([pcap]).to_dict()
    st = s["stages"]
    assert (st["post_syn"], st["post_ack"], st["post_psh"]) == (0, 0, 12), s
    raced = s["excluded"]["incomplete"]
    assert st["later_in_flow"] + st["no_match"] + raced == 12 and s["tags"]["timeout"] == 0, s
    assert raced <= 2 and s["excluded"]["multi_syn"] == 0, s
    return 24 - raced  # the connections classified: a raced one is excluded, no record


def _topic_bytes(conf: dict[str, Any], topics: list[str]) -> tuple[bytes, int]:
    c = Consumer({**conf, "group.id": f"scan-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    chunks: list[bytes] = []
    n = 0
    try:
        for t in topics:
            md = c.list_topics(t, timeout=10).topics[t]
            ends = {p: c.get_watermark_offsets(TopicPartition(t, p), timeout=10) for p in md.partitions}
            want = {p for p, (lo, hi) in ends.items() if hi > lo}
            c.assign([TopicPartition(t, p, ends[p][0]) for p in want])
            deadline = time.monotonic() + 30
            while want and time.monotonic() < deadline:
                for m in c.consume(1000, timeout=0.5):
                    if m.error() is not None:
                        continue
                    n += 1
                    chunks += [m.key() or b"", m.value() or b""]
                    chunks += [k.encode() + (v or b"") for k, v in (m.headers() or [])]
                    if m.offset() + 1 >= ends[m.partition()][1]:
                        want.discard(m.partition())
            assert not want, f"could not read all of {t}"
            c.unassign()
    finally:
        c.close()
    return b"\n".join(chunks), n


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("tcpdump"), reason="needs root, ip netns and tcpdump")
def test_no_payload_bytes_anywhere(kafka_cluster3: Any, work: Path, figures: dict[str, Any]) -> None:
    marker = "PAYLOADMARK" + secrets.token_hex(6)
    (work / "input").mkdir()
    pcap = make_capture(work / "input" / "marker.pcap", marker)  # outside run.work: the input is not scanned
    assert marker.encode() in pcap.read_bytes(), "the capture should hold the payloads"
    classified = check_counts(pcap)
    run = Run(work / "run", kafka_cluster3.bootstrap)
    run.create_topics()
    try:
        w = run.start_worker()
        run.wait_log(w, READY)
        rc, stats = run.edge_result(run.edge(pcap))
        assert rc == 0, run.logs()
        v = run.verdict(pcap)
        assert v["rows_equal"] and v["connections"] == classified, (v, run.logs())
        time.sleep(6)  # one stats line at least
    finally:
        run.stop_all()
    from confluent_kafka.admin import AdminClient

    names = sorted(t for t in AdminClient(run.conf).list_topics(timeout=10).topics
                   if t.startswith((run.tag + ".", run.app_id)))
    assert len(names) >= 6, names
    raw, messages = _topic_bytes(run.conf, names)
    needles = [marker.encode(), marker.encode().hex().encode(), base64.b64encode(marker.encode())[:16]]
    for needle in needles:
        assert needle not in raw, f"payload bytes ({needle!r}) on a topic"
    files = [p for p in run.work.rglob("*") if p.is_file()]
    scanned = 0
    for f in files:
        data = f.read_bytes()
        scanned += len(data)
        for needle in needles:
            assert needle not in data, f"payload bytes ({needle!r}) in {f}"
    figures.update(produced=stats["delivered"], **v, topics_scanned=len(names), messages_scanned=messages,
                   topic_bytes_scanned=len(raw), files_scanned=len(files), file_bytes_scanned=scanned,
                   marker_hits=0)
