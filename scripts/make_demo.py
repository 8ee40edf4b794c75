"""Build examples/demo.pcap, the README's embedded default, by merging real fixture captures in time order.

Usage: python3 scripts/make_demo.py  (reads tests/fixtures, writes examples/demo.pcap)
All inputs are Ethernet pcaps made by scripts/make_fixtures.py; merging keeps their packets as captured.
"""

from __future__ import annotations

import struct
from pathlib import Path

from rstscope.capture.files import read_frames

ROOT = Path(__file__).resolve().parent.parent
PARTS = ["http_ok.pcap", "abort_post_ack.pcap", "abort_post_psh.pcap", "abort_later.pcap",
         "idle_timeouts.pcap", "nmap_syn.pcap", "zmap.pcap", "hping3.pcap", "synack_dropped.pcap",
         "mirai.pcap", "masscan.pcap"]


def main() -> None:
    frames = []
    for name in PARTS:
        for fr in read_frames(ROOT / "tests" / "fixtures" / name):
            if fr.linktype != 1:
                raise SystemExit(f"{name}: linktype {fr.linktype}, expected Ethernet")
            frames.append((fr.ts, fr.data))
    frames.sort(key=lambda f: f[0])
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for ts, data in frames:
        sec = int(ts)
        out.append(struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(data), len(data)) + data)
    dest = ROOT / "examples" / "demo.pcap"
    dest.write_bytes(b"".join(out))
    print(f"{dest}: {len(frames)} frames from {len(PARTS)} captures")


if __name__ == "__main__":
    main()
