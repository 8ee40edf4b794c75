"""Bad input never crashes a run: random frames, random files, random records (short hypothesis runs;
the long fuzz campaigns live in bench/)."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

from builders import T0, ether, ipv4_tcp, pcap_bytes, pcapng_bytes, syn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rstscope.capture.files import CaptureError, FileStats, read_frames
from rstscope.codecs import CodecError
from rstscope.codecs.packet import decode
from rstscope.decode import decode_frame
from rstscope.packet import PacketRecord

LINKTYPES = st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 239, 276, 147])


@settings(max_examples=3000, deadline=None)
@given(LINKTYPES, st.binary(max_size=200))
def test_decode_frame_never_raises(linktype: int, data: bytes) -> None:
    out = decode_frame(T0, linktype, data)
    assert isinstance(out, (str, PacketRecord))


@settings(max_examples=1500, deadline=None)
@given(st.binary(min_size=1, max_size=120), st.integers(0, 200))
def test_mutated_valid_frames_never_raise(noise: bytes, at: int) -> None:
    frame = bytearray(ether(ipv4_tcp(syn())))
    for i, b in enumerate(noise):
        frame[(at + i) % len(frame)] = b
    assert isinstance(decode_frame(T0, 1, bytes(frame)), (str, PacketRecord))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["pcap", "pcapng"]), st.binary(max_size=64), st.integers(0, 400))
def test_damaged_files_raise_capture_error_or_count(tmp_path: Path, kind: str, noise: bytes, at: int) -> None:
    frames = [(T0 + i, ether(ipv4_tcp(syn(sport=i + 1)))) for i in range(5)]
    data = bytearray(pcap_bytes(frames) if kind == "pcap" else pcapng_bytes(frames))
    for i, b in enumerate(noise):
        data[(at + i) % len(data)] = b
    f = tmp_path / f"x.{kind}"
    f.write_bytes(bytes(data))
    st_ = FileStats(str(f))
    try:
        for fr in read_frames(f, st_):
            decode_frame(fr.ts, fr.linktype, fr.data)
    except CaptureError as e:
        assert str(f) in str(e) and "byte" in str(e)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=80))
def test_record_decoder_raises_only_codec_errors(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode(data)


def test_pcap_with_wrong_linktype_counts_every_frame(tmp_path: Path) -> None:
    frames = [(T0, ether(ipv4_tcp(syn())))]
    data = bytearray(pcap_bytes(frames))
    struct.pack_into("<I", data, 20, 229)  # claims raw IPv6, holds Ethernet
    f = tmp_path / "wrong.pcap"
    f.write_bytes(bytes(data))
    (fr,) = list(read_frames(f))
    assert isinstance(decode_frame(fr.ts, fr.linktype, fr.data), str)


def test_pcapng_interface_option_cut_by_the_block_end_is_not_a_crash(tmp_path: Path) -> None:
    """Found by the soak's fuzzer: an if_tsresol option whose length runs past its block raised
    IndexError out of read_frames. The options are read up to the block's end, nothing more."""
    shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    opts = struct.pack("<HH", 9, 200)  # if_tsresol, 200 bytes long, in a 24-byte block
    body = struct.pack("<HHI", 1, 0, 65535) + opts
    idb = struct.pack("<II", 1, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    p = tmp_path / "cut-option.pcapng"
    p.write_bytes(shb + idb)
    st = FileStats(str(p))
    assert list(read_frames(p, st)) == []
