"""Fuzz the NFLOG link layer (TLV parser) and the IP/TCP decoder behind it.

``nflog(data)`` returns the payload offset or a reason; ``decode_frame(ts, 239, data)`` a packet record
or a reason. Both must return, never raise. Seeds: the frames of tests/fixtures/nflog.pcap.
``python bench/fuzz_nflog.py [--engine atheris|mutate] [--runs N]`` (see fuzz_common.py).
"""

from __future__ import annotations

from fuzz_common import Target, fixture_frames, main


def make_target() -> Target:
    from rstscope.decode import decode_frame
    from rstscope.decode.link import LINKTYPE_NFLOG, nflog

    def target(data: bytes) -> str:
        r = nflog(data)
        if isinstance(r, str):
            return r
        off, _version = r
        assert 4 <= off <= len(data), (off, len(data))
        rec = decode_frame(0.0, LINKTYPE_NFLOG, data)
        return rec if isinstance(rec, str) else "packet"

    return target


def seeds() -> list[bytes]:
    from rstscope.decode.link import LINKTYPE_NFLOG

    return [*fixture_frames(["nflog.pcap"], LINKTYPE_NFLOG)[:64], b"\x02\x00\x00\x00"]


if __name__ == "__main__":
    raise SystemExit(main("nflog", make_target, seeds))
