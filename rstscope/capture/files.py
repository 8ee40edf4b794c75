"""Reading pcap and pcapng files, plain or gzip/xz compressed, into raw frames.

The framing is our own: both formats are a few fixed headers, and parsing them from large buffered
chunks with ``struct.unpack_from`` is several times faster than dpkt's or python-pcapng's readers
(see bench/bench_reader.py). A broken file header is a ``CaptureError`` naming the file and byte
offset; a broken record stops that file and is reported through ``FileStats`` instead of crashing.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

CHUNK = 4 << 20
MAX_RECORD = 1 << 18  # 256 KiB: larger than any real snaplen; beyond this a record header is garbage

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
PCAPNG_BOM = 0x1A2B3C4D
PCAPNG_IDB = 0x00000001
PCAPNG_PB = 0x00000002  # obsolete Packet Block
PCAPNG_SPB = 0x00000003
PCAPNG_EPB = 0x00000006


class CaptureError(Exception):
    """The file cannot be read as a capture at all (bad magic, broken file header)."""

    def __init__(self, path: str, offset: int, message: str) -> None:
        super().__init__(f"{path}: byte {offset}: {message}")
        self.path = path
        self.offset = offset


class Frame(NamedTuple):
    """One captured frame: capture time, link type and the captured bytes (maybe truncated)."""

    ts: float
    linktype: int
    data: bytes


@dataclass
class FileStats:
    """What reading one file found beyond the frames themselves."""

    path: str
    frames: int = 0
    bytes_read: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    stopped_at: int | None = None  # byte offset where a broken record stopped the file

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


def compression(head: bytes) -> str | None:
    """The compression a file's first 6 bytes announce (gzip, xz, bzip2), or None."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh":
        return "bzip2"
    return None


def open_capture(path: Path) -> IO[bytes]:
    """Open a file, undoing gzip, xz or bzip2 compression by content (not by name)."""
    raw = path.open("rb")
    kind = compression(raw.read(6))
    raw.seek(0)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw)
    if kind == "bzip2":
        return bz2.BZ2File(raw)
    return raw


class _Buffer:
    """A sliding window over a stream, so records are parsed from large chunks with unpack_from."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buf = b""
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.eof = False

    def ensure(self, n: int) -> bool:
        """Make n bytes available at pos; False at end of file."""
        if len(self.buf) - self.pos >= n:
            return True
        while not self.eof and len(self.buf) - self.pos < n:
            chunk = self.stream.read(max(CHUNK, n))
            if not chunk:
                self.eof = True
                break
            self.base += self.pos
            self.buf = self.buf[self.pos:] + chunk
            self.pos = 0
        return len(self.buf) - self.pos >= n

    @property
    def offset(self) -> int:
        return self.base + self.pos


def read_frames(path: Path | str, stats: FileStats | None = None) -> Iterator[Frame]:
    """Yield the frames of one capture file (pcap or pcapng, maybe compressed)."""
    p = Path(path)
    st = stats if stats is not None else FileStats(str(p))
    try:
        stream = open_capture(p)
    except OSError as e:
        raise CaptureError(str(p), 0, f"cannot open: {e.strerror or e}") from e
    with stream:
        buf = _Buffer(stream)
        try:
            if not buf.ensure(4):
                raise CaptureError(str(p), 0, "empty file, not a pcap or pcapng capture")
            magic = buf.buf[buf.pos:buf.pos + 4]
            if magic in PCAP_MAGIC:
                yield from _read_pcap(buf, str(p), st)
            elif magic == PCAPNG_SHB:
                yield from _read_pcapng(buf, str(p), st)
            else:
                raise CaptureError(str(p), 0, f"unknown magic {magic.hex()}, not a pcap or pcapng capture")
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
            # A damaged compressed stream: keep what was read, say where it broke.
            st.error("compressed_stream_error")
            st.stopped_at = buf.offset
            if st.frames == 0 and buf.offset == 0:
                raise CaptureError(str(p), 0, f"cannot decompress: {e}") from e


def _read_pcap(buf: _Buffer, path: str, st: FileStats) -> Iterator[Frame]:
    if not buf.ensure(24):
        raise CaptureError(path, 0, "truncated pcap file header (need 24 bytes)")
    endian, tick = PCAP_MAGIC[buf.buf[buf.pos:buf.pos + 4]]
    major, _minor, _tz, _sig, _snaplen, network = struct.unpack_from(endian + "HHiIII", buf.buf, buf.pos + 4)
    if major != 2:
        raise CaptureError(path, 4, f"unsupported pcap major version {major}")
    linktype = network & 0x0FFFFFFF
    buf.pos += 24
    rec = struct.Struct(endian + "IIII")
    unpack = rec.unpack_from
    while True:
        # buf.ensure(n) only when the record is not wholly in the buffer already (a 4 MiB chunk holds
        # thousands): two method calls less per frame
        chunk, pos = buf.buf, buf.pos
        if len(chunk) - pos < 16:
            if not buf.ensure(16):
                if len(buf.buf) - buf.pos:
                    st.error("truncated_record_header")
                    st.stopped_at = buf.offset
                return
            chunk, pos = buf.buf, buf.pos
        sec, frac, incl, _orig = unpack(chunk, pos)
        if incl > MAX_RECORD:
            st.error("absurd_record_length")
            st.stopped_at = buf.offset
            return
        if len(chunk) - pos < 16 + incl:
            if not buf.ensure(16 + incl):
                st.error("truncated_record")
                st.stopped_at = buf.offset
                return
            chunk, pos = buf.buf, buf.pos
        start = pos + 16
        data = chunk[start:start + incl]
        buf.pos = start + incl
        st.frames += 1
        st.bytes_read += 16 + incl
        yield tuple.__new__(Frame, (sec + frac * tick, linktype, data))  # no namedtuple arg handling: hot


@dataclass
class _Interface:
    linktype: int
    tick: float = 1e-6
    offset_s: int = 0


def _idb_options(body: bytes, endian: str, start: int) -> tuple[float, int]:
    """if_tsresol (9) and if_tsoffset (14) of an Interface Description Block."""
    tick, off = 1e-6, 0
    i = start
    while i + 4 <= len(body):
        code, length = struct.unpack_from(endian + "HH", body, i)
        i += 4
        if code == 0 or i + length > len(body):  # end of options, or an option cut by the block's end
            break
        val = body[i:i + length]
        if code == 9 and length >= 1:
            r = val[0]
            tick = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
        elif code == 14 and length == 8:
            off = struct.unpack_from(endian + "q", val)[0]
        i += (length + 3) & ~3
    return tick, off


def _read_pcapng(buf: _Buffer, path: str, st: FileStats) -> Iterator[Frame]:
    endian = "<"
    ifaces: list[_Interface] = []
    first = True
    while True:
        if not buf.ensure(12):
            if len(buf.buf) - buf.pos:
                st.error("truncated_block_header")
                st.stopped_at = buf.offset
            return
        block_off = buf.offset
        head = buf.buf[buf.pos:buf.pos + 12]
        if head[:4] == PCAPNG_SHB:
            bom_le = struct.unpack_from("<I", head, 8)[0]
            if bom_le == PCAPNG_BOM:
                endian = "<"
            elif struct.unpack_from(">I", head, 8)[0] == PCAPNG_BOM:
                endian = ">"
            else:
                if first:
                    raise CaptureError(path, block_off + 8, "pcapng section header has a bad byte-order magic")
                st.error("bad_section_header")
                st.stopped_at = block_off
                return
            ifaces = []  # interface ids are per section
        elif first:
            raise CaptureError(path, 0, "pcapng file does not start with a section header block")
        btype, blen = struct.unpack_from(endian + "II", head, 0)
        if blen < 12 or blen % 4 or blen > MAX_RECORD + 64:
            if first:
                raise CaptureError(path, block_off + 4, f"pcapng block length {blen} is invalid")
            st.error("bad_block_length")
            st.stopped_at = block_off
            return
        if not buf.ensure(blen):
            st.error("truncated_block")
            st.stopped_at = block_off
            return
        body = buf.buf[buf.pos + 8:buf.pos + blen - 4]
        buf.pos += blen
        first = False
        if btype == PCAPNG_EPB and len(body) >= 20:
            iface_id, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(endian + "IIIII", body, 0)
            frame = _pcapng_frame(ifaces, iface_id, ts_hi, ts_lo, body, 20, caplen, st)
            if frame is not None:
                yield frame
        elif btype == PCAPNG_IDB and len(body) >= 8:
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            tick, off = _idb_options(body, endian, 8)
            ifaces.append(_Interface(linktype, tick, off))
        elif btype == PCAPNG_SPB and len(body) >= 4:
            orig = struct.unpack_from(endian + "I", body, 0)[0]
            if not ifaces:
                st.error("packet_before_interface")
                continue
            caplen = min(orig, len(body) - 4)
            st.frames += 1
            st.bytes_read += blen
            st.error("simple_packet_block_without_time")
            yield Frame(0.0, ifaces[0].linktype, body[4:4 + caplen])
        elif btype == PCAPNG_PB and len(body) >= 20:
            iface_id, _drops, ts_hi, ts_lo, caplen, _orig = struct.unpack_from(endian + "HHIIII", body, 0)
            frame = _pcapng_frame(ifaces, iface_id, ts_hi, ts_lo, body, 20, caplen, st)
            if frame is not None:
                yield frame
        # Other blocks (name resolution, statistics, custom) carry nothing we need.


def _pcapng_frame(
    ifaces: list[_Interface], iface_id: int, ts_hi: int, ts_lo: int,
    body: bytes, start: int, caplen: int, st: FileStats,
) -> Frame | None:
    if iface_id >= len(ifaces):
        st.error("unknown_interface_id")
        return None
    if start + caplen > len(body):
        st.error("caplen_beyond_block")
        return None
    iface = ifaces[iface_id]
    st.frames += 1
    st.bytes_read += caplen
    ts = ((ts_hi << 32) | ts_lo) * iface.tick + iface.offset_s
    return Frame(ts, iface.linktype, body[start:start + caplen])


