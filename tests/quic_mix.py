"""The QUIC bed's capture with two small TCP captures moved into its time span: one input, both transports.

Used by tests/test_quic_stage.py (the worker stage without Kafka) and tests/kafka/test_quic_kafka.py.
"""

from __future__ import annotations

from pathlib import Path

from rstscope.capture.files import FileStats, read_frames
from tests.builders import pcap_bytes

FIXTURES = Path(__file__).resolve().parent / "fixtures"
QUIC_PCAP = FIXTURES / "quic_bed.pcap"
QUIC_SERVERS = ["10.78.2.2", "10.78.2.3", "fd78:2::2", "fd78:2::3"]
TCP_SERVER = "10.99.0.2"
TCP_PORTS = [80, 8080]
SERVERS = [*QUIC_SERVERS, TCP_SERVER]
# (file, seconds after the QUIC capture's first frame where it starts)
TCP_PARTS = (("http_ok.pcap", 2), ("linger_aborts.pcap", 5))


def _frames(path: Path) -> list[tuple[float, int, bytes]]:
    return [(f.ts, f.linktype, f.data) for f in read_frames(path, FileStats(str(path)))]


def mixed_capture(out: Path) -> Path:
    """QUIC bed + TCP fixtures shifted by whole seconds (microseconds unchanged), merged in time order."""
    frames = _frames(QUIC_PCAP)
    start = frames[0][0]
    for name, at in TCP_PARTS:
        tcp = _frames(FIXTURES / name)
        shift = int(start - tcp[0][0]) + at
        frames += [(ts + shift, lt, data) for ts, lt, data in tcp]
    assert {lt for _ts, lt, _d in frames} == {1}  # all Ethernet
    frames.sort(key=lambda f: f[0])
    out.write_bytes(pcap_bytes([(ts, data) for ts, _lt, data in frames]))
    return out
