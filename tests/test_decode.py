"""Link layers, IPv4/IPv6 and TCP decoding, and the pcap/pcapng readers, on hand-built frames."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest
from builders import SERVER, T0, ether, ipv4_tcp, ipv6_tcp, pcap_bytes, pcapng_bytes, psh, syn

from rstscope.capture.files import CaptureError, FileStats, read_frames
from rstscope.decode import decode_frame
from rstscope.packet import TH_SYN

V6C = bytes.fromhex("fd000000000000000000000000000001")
V6S = bytes.fromhex("fd000000000000000000000000000002")


def test_ethernet_ipv4_fields():
    p = psh(200, ttl=57, ipid=4242, opt_len=12)
    rec = decode_frame(T0, 1, ether(ipv4_tcp(p)))
    assert not isinstance(rec, str)
    assert rec == p._replace(ts=T0)


def test_payload_length_comes_from_ip_header_even_when_snapped():
    frame = ether(ipv4_tcp(psh(1000)))[:80]
    rec = decode_frame(T0, 1, frame)
    assert not isinstance(rec, str) and rec.payload_len == 1000


@pytest.mark.parametrize("vlans", [((0x8100, 100),), ((0x88A8, 10), (0x8100, 20)), ((0x9100, 1), (0x8100, 2))])
def test_vlan_and_qinq(vlans):
    rec = decode_frame(T0, 1, ether(ipv4_tcp(syn()), vlans=vlans))
    assert not isinstance(rec, str) and rec.flags == TH_SYN


def test_linux_sll_and_sll2():
    ip = ipv4_tcp(syn())
    sll = struct.pack(">HHH8sH", 0, 1, 6, b"\x00" * 8, 0x0800) + ip
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 2, 1, 0, 6, b"\x00" * 8) + ip
    assert not isinstance(decode_frame(T0, 113, sll), str)
    assert not isinstance(decode_frame(T0, 276, sll2), str)


def test_raw_ip_and_bsd_loopback():
    assert not isinstance(decode_frame(T0, 101, ipv4_tcp(syn())), str)
    assert not isinstance(decode_frame(T0, 228, ipv4_tcp(syn())), str)
    assert not isinstance(decode_frame(T0, 0, struct.pack("=I", 2) + ipv4_tcp(syn())), str)


def nflog_frame(ip: bytes, family: int = 2, pad_tlvs: int = 1) -> bytes:
    out = bytes([family, 0]) + struct.pack(">H", 5)
    for _ in range(pad_tlvs):  # a prefix TLV with an odd length, padded to 4
        out += struct.pack("<HH", 4 + 5, 10) + b"pref\x00" + b"\x00" * 3
    out += struct.pack("<HH", 4 + len(ip), 9) + ip
    return out + b"\x00" * (-len(out) % 4)


def test_nflog_tlvs():
    rec = decode_frame(T0, 239, nflog_frame(ipv4_tcp(syn())))
    assert not isinstance(rec, str) and rec.dst == SERVER
    rec6 = decode_frame(T0, 239, nflog_frame(ipv6_tcp(syn(src=V6C, dst=V6S)), family=10))
    assert not isinstance(rec6, str) and rec6.version == 6


def test_nflog_bad_tlv_and_missing_payload():
    assert decode_frame(T0, 239, bytes([2, 0, 0, 5]) + struct.pack("<HH", 200, 9)) == "bad_nflog_tlv"
    assert decode_frame(T0, 239, bytes([2, 0, 0, 5]) + struct.pack("<HH", 8, 10) + b"abcd") == "nflog_no_payload"


def test_ipv6_extension_headers_are_walked():
    hbh = bytes([60, 0]) + b"\x00" * 6  # hop-by-hop, next: destination options
    dst = bytes([44, 0]) + b"\x00" * 6  # destination options, next: fragment
    frag = bytes([6, 0]) + struct.pack(">HI", 0, 1)  # first fragment (offset 0), next: TCP
    rec = decode_frame(T0, 1, ether(ipv6_tcp(psh(10, src=V6C, dst=V6S), ext=hbh + dst + frag, first_next=0), 0x86DD))
    assert not isinstance(rec, str) and rec.payload_len == 10 and rec.ipid is None


def test_ipv6_extension_header_loop_is_bounded():
    ext = (bytes([0, 0]) + b"\x00" * 6) * 20
    assert decode_frame(T0, 101, ipv6_tcp(syn(src=V6C, dst=V6S), ext=ext, first_next=0)) == "ipv6_ext_loop"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00" * 10, "truncated_link"),
        (ether(b"\x45" + b"\x00" * 10), "truncated_ip"),
        (ether(b"\x00" * 40, 0x0806), "non_ip"),
        (ether(ipv4_tcp(syn())[:9] + b"\x11" + ipv4_tcp(syn())[10:]), "non_tcp"),
        (ether(ipv4_tcp(syn())[:30]), "truncated_tcp"),
        (ether(b"\x44" + ipv4_tcp(syn())[1:]), "bad_ip_header_length"),
        (ether(ipv4_tcp(syn())[:6] + b"\x00\x10" + ipv4_tcp(syn())[8:]), "ip_fragment"),
    ],
)
def test_bad_frames_give_reasons(frame, reason):
    assert decode_frame(T0, 1, frame) == reason


def test_unknown_linktype():
    assert decode_frame(T0, 147, b"\x00" * 60) == "unknown_linktype"


def frames3() -> list[tuple[float, bytes]]:
    return [(T0 + i * 0.001, ether(ipv4_tcp(syn(sport=1000 + i)))) for i in range(3)]


@pytest.mark.parametrize("nanos", [False, True])
def test_pcap_reader(tmp_path: Path, nanos: bool):
    f = tmp_path / "a.pcap"
    f.write_bytes(pcap_bytes(frames3(), nanos=nanos))
    got = list(read_frames(f))
    assert [round(g.ts, 6) for g in got] == [round(T0 + i * 0.001, 6) for i in range(3)]
    assert all(g.linktype == 1 for g in got)


@pytest.mark.parametrize("tsresol", [6, 9])
def test_pcapng_reader(tmp_path: Path, tsresol: int):
    f = tmp_path / "a.pcapng"
    f.write_bytes(pcapng_bytes(frames3(), tsresol=tsresol))
    got = list(read_frames(f))
    assert len(got) == 3 and abs(got[2].ts - (T0 + 0.002)) < 1e-6


def test_compressed_files(tmp_path: Path):
    data = pcap_bytes(frames3())
    (tmp_path / "a.pcap.gz").write_bytes(gzip.compress(data))
    (tmp_path / "a.pcap.xz").write_bytes(lzma.compress(data))
    assert len(list(read_frames(tmp_path / "a.pcap.gz"))) == 3
    assert len(list(read_frames(tmp_path / "a.pcap.xz"))) == 3


def test_broken_header_names_file_and_offset(tmp_path: Path):
    f = tmp_path / "bad.pcap"
    f.write_bytes(b"NOTAPCAPFILE" * 4)
    with pytest.raises(CaptureError, match=r"bad\.pcap: byte 0: unknown magic"):
        list(read_frames(f))
    g = tmp_path / "short.pcap"
    g.write_bytes(pcap_bytes([])[:10])
    with pytest.raises(CaptureError, match=r"short\.pcap: byte 0: truncated pcap file header"):
        list(read_frames(g))
    h = tmp_path / "bad.pcapng"
    h.write_bytes(b"\x0a\x0d\x0d\x0a" + struct.pack("<I", 28) + b"\x00\x00\x00\x00" + b"\x00" * 16)
    with pytest.raises(CaptureError, match=r"bad\.pcapng: byte 8: pcapng section header has a bad byte-order"):
        list(read_frames(h))


def test_truncated_last_record_is_counted_not_fatal(tmp_path: Path):
    f = tmp_path / "cut.pcap"
    data = pcap_bytes(frames3())
    f.write_bytes(data[:-10])
    st = FileStats(str(f))
    assert len(list(read_frames(f, st))) == 2
    assert st.errors == {"truncated_record": 1} and st.stopped_at is not None


def test_absurd_record_length_stops_file(tmp_path: Path):
    f = tmp_path / "absurd.pcap"
    data = bytearray(pcap_bytes(frames3()))
    struct.pack_into("<I", data, 24 + 8, 0x7FFFFFFF)
    f.write_bytes(bytes(data))
    st = FileStats(str(f))
    assert list(read_frames(f, st)) == []
    assert st.errors == {"absurd_record_length": 1} and st.stopped_at == 24
