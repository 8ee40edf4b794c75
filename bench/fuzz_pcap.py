"""Fuzz the capture reader (pcap, pcapng, gzip/xz/bzip2) and the frame decoder behind it.

Every input is written to a file on tmpfs and read with ``read_frames`` (the edge's and analyze's
reader), each frame through ``decode_frame``. Allowed outcomes: frames read, per-file errors counted in
``FileStats``, or a ``CaptureError`` (a refused file: the edge exits 2). Anything else is a bug.
``python bench/fuzz_pcap.py [--engine atheris|mutate] [--runs N]`` (see fuzz_common.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fuzz_common import FIXTURES, Target, main


def make_target() -> Target:
    from rstscope.capture.files import CaptureError, FileStats, read_frames
    from rstscope.decode import decode_frame

    d = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    path = d / f"rstscope-fuzz-{os.getpid()}.pcap"

    def target(data: bytes) -> str:
        path.write_bytes(data)
        st = FileStats(str(path))
        frames = packets = 0
        try:
            for ts, linktype, frame in read_frames(path, st):
                frames += 1
                if not isinstance(decode_frame(ts, linktype, frame), str):
                    packets += 1
        except CaptureError:
            return "capture_error"
        if st.errors:
            return "file_errors:" + ",".join(sorted(st.errors))
        return "packets" if packets else "frames" if frames else "empty"

    return target


def seeds() -> list[bytes]:
    return [p.read_bytes()[:16384] for p in sorted(FIXTURES.glob("*.pcap*"))]


if __name__ == "__main__":
    raise SystemExit(main("pcap", make_target, seeds))
