"""Build examples/demo.pcap, the README's embedded default, by merging real fixture captures in time order.

Usage: python3 scripts/make_demo.py  (reads tests/fixtures, writes examples/demo.pcap and examples/demo.expect.json)
All inputs are Ethernet pcaps made by scripts/make_fixtures.py; merging keeps their packets as captured.

The expected results of the merged file are NOT the sum of its parts' manifest entries: the parts lie
minutes apart, so a connection that was `incomplete` at the end of its own capture becomes a timeout when
another part's traffic follows >= 10 s later (or stays incomplete when it is the last one in its 15-minute
window), and parts that share a window share its 4-tuples. So the expectation is derived from the merged
file itself by make_fixtures.py's own reader and classifier (never by rstscope) and written, with the
demo's SHA-256, to examples/demo.expect.json, which tests/test_demo.py reads.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from make_fixtures import analyse, read_capture  # noqa: E402

PARTS = ["http_ok.pcap", "abort_post_ack.pcap", "abort_post_psh.pcap", "abort_later.pcap",
         "idle_timeouts.pcap", "nmap_syn.pcap", "zmap.pcap", "hping3.pcap", "synack_dropped.pcap",
         "mirai.pcap", "masscan.pcap"]
DEMO = ROOT / "examples" / "demo.pcap"
EXPECT = ROOT / "examples" / "demo.expect.json"


def main() -> None:
    frames = []
    for name in PARTS:
        for ts, linktype, data in read_capture(ROOT / "tests" / "fixtures" / name):
            if linktype != 1:
                raise SystemExit(f"{name}: linktype {linktype}, expected Ethernet")
            frames.append((ts, data))
    frames.sort(key=lambda f: f[0])  # stable: a part's own order is kept for equal timestamps
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for ts, data in frames:
        sec = int(ts)
        usec = round((ts - sec) * 1e6)
        if usec == 1_000_000:
            sec, usec = sec + 1, 0
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
    DEMO.write_bytes(b"".join(out))
    res = analyse(DEMO, single_window=False)
    EXPECT.write_text(json.dumps({
        "file": "examples/demo.pcap",
        "sha256": hashlib.sha256(DEMO.read_bytes()).hexdigest(),
        "parts": PARTS,
        "derived_by": "scripts/make_demo.py: scripts/make_fixtures.py analyse() on the merged file",
        "expect": res["expect"],
        "facts": res["facts"],
    }, indent=2, ensure_ascii=False) + "\n")
    print(f"{DEMO}: {len(frames)} frames from {len(PARTS)} captures")
    print(f"{EXPECT}: {json.dumps(res['expect'], ensure_ascii=False)}")


if __name__ == "__main__":
    main()
