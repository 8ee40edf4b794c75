"""Batch reading: capture files -> slices of columns of decoded TCP header fields (numpy arrays).

Classic pcap files (not compressed) are read in blocks into one reused buffer (so memory does not grow
with the file, and no page of a memory map is counted against the run), framed by a tight offset loop,
then the common frames (Ethernet, one 802.1Q tag, Linux cooked v1/v2, raw IP; IPv4 without options;
TCP) are decoded all at once: the first ``ROW`` bytes of every record are copied into one ``(n, ROW)``
byte matrix and read through a structured dtype, so each field is a single vectorized conversion.
Every other frame (IPv6, IP options, odd link types, truncated or malformed frames) goes through the
reference per-frame decoder (``rstscope.decode.decode_frame``), and pcapng or compressed files are
framed by the reference reader (``rstscope.capture.files.read_frames``). The result is exactly what the
per-packet path decodes, frame for frame, with the same counters and ``FileStats``.

``SliceReader`` yields the input as consecutive slices of at most ``slice_frames`` frames (a slice never
spans two files); ``read_columns`` joins them (tests, small inputs).
"""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rstscope.capture.files import MAX_RECORD, PCAP_MAGIC, FileStats, read_frames
from rstscope.decode import NON_TCP_REASONS, decode_frame
from rstscope.decode.link import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    LINKTYPE_RAW_OLD,
    LINKTYPE_RAW_OLD2,
    VLAN_TYPES,
)
from rstscope.packet import V6_BASE, PacketRecord, pack_key

F8 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int64]
ROW = 16 + 18 + 20 + 20  # record header, Ethernet + one VLAN tag, IPv4 and TCP without options
BLOCK = 8 << 20  # bytes of a pcap file read at once (holds many MAX_RECORD records)
CHUNK = 1 << 16  # records decoded per vectorized step (bounds its temporaries)
_LIVE_HEAD = struct.Struct("<IIII")  # decode_batch's record header: sec, frac (unused), captured, original length
OtherFrame = tuple[int, float, int, bytes]  # frame index in its slice, time, link type, the frame

_RAW_TYPES = (LINKTYPE_RAW, LINKTYPE_RAW_OLD, LINKTYPE_RAW_OLD2, LINKTYPE_IPV4)
_FAST_LINKTYPES = (LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, *_RAW_TYPES)


class AddressTable:
    """Packed addresses <-> integer ids (IPv4: the address value; IPv6: V6_BASE + index)."""

    def __init__(self) -> None:
        self.v6: list[bytes] = []
        self.v6_index: dict[bytes, int] = {}

    def id_of(self, packed: bytes) -> int:
        if len(packed) == 4:
            return int.from_bytes(packed, "big")
        i = self.v6_index.get(packed)
        if i is None:
            i = self.v6_index[packed] = len(self.v6)
            self.v6.append(packed)
        return V6_BASE + i

    def packed(self, ident: int) -> bytes:
        if ident < V6_BASE:
            return ident.to_bytes(4, "big")
        return self.v6[ident - V6_BASE]


# Stored narrow (memory); the engine does its arithmetic on int64 where it can overflow (addresses,
# sequence numbers), and only compares the rest.
DTYPES: dict[str, Any] = {
    "ts": np.float64, "version": np.int8, "src": np.int64, "dst": np.int64, "sport": np.uint16,
    "dport": np.uint16, "flags": np.uint8, "seq": np.int64, "ack": np.int64, "ipid": np.int32, "ttl": np.uint8,
    "window": np.uint16, "payload": np.int32, "optlen": np.int16,
}
_FIELDS = tuple(k for k in DTYPES if k != "ts")
_KEY4 = np.dtype([("src", ">u4"), ("sport", ">u2"), ("dst", ">u4"), ("dport", ">u2")])  # packet.pack_key, IPv4


@dataclass
class Columns:
    """TCP packets (in input order) as columns, plus what reading and decoding counted.

    A slice from ``SliceReader`` counts its own ``frames`` (TCP or not) and has the latest frame time
    up to its end (``end_ts``); the other counters and ``files`` are the reader's (``read_columns``
    fills them for the whole input)."""

    ts: F8
    version: npt.NDArray[np.int8]
    src: I8  # address ids (AddressTable)
    dst: I8
    sport: npt.NDArray[np.uint16]
    dport: npt.NDArray[np.uint16]
    flags: npt.NDArray[np.uint8]
    seq: I8
    ack: I8
    ipid: npt.NDArray[np.int32]  # -1: none (IPv6)
    ttl: npt.NDArray[np.uint8]
    window: npt.NDArray[np.uint16]
    payload: npt.NDArray[np.int32]
    optlen: npt.NDArray[np.int16]
    addresses: AddressTable
    frames: int = 0
    non_tcp: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    end_ts: float = float("-inf")
    files: list[FileStats] = field(default_factory=list)
    # ``SliceReader(frame_info=True)`` only (the edge, which needs where each packet was in the capture):
    frame_ts: F8 | None = None  # every frame's time, TCP or not, in input order
    at: I8 | None = None  # each packet's frame (index into frame_ts)
    others: list[OtherFrame] = field(default_factory=list)  # ``keep_non_tcp``: the non-TCP IP frames, raw

    def __len__(self) -> int:
        return len(self.ts)

    def record(self, i: int) -> PacketRecord:
        """Packet i as the reference decoder's PacketRecord."""
        a = self.addresses
        ipid = int(self.ipid[i])
        return PacketRecord(float(self.ts[i]), int(self.version[i]), a.packed(int(self.src[i])),
                            a.packed(int(self.dst[i])), int(self.sport[i]), int(self.dport[i]),
                            int(self.flags[i]), int(self.seq[i]), int(self.ack[i]), None if ipid < 0 else ipid,
                            int(self.ttl[i]), int(self.window[i]), int(self.payload[i]), int(self.optlen[i]))

    def arrays(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in DTYPES}

    def packed_keys(self, idx: I8) -> list[bytes]:
        """``PacketRecord.packed_key`` of the packets at ``idx``: IPv4 tuples packed all at once."""
        src, dst, sport, dport = self.src[idx], self.dst[idx], self.sport[idx], self.dport[idx]
        v4 = (src < V6_BASE) & (dst < V6_BASE)
        rows = np.empty(len(idx), dtype=_KEY4)
        rows["src"], rows["sport"], rows["dst"], rows["dport"] = src, sport, dst, dport
        raw = rows.tobytes()
        keys = [raw[i:i + 12] for i in range(0, len(raw), 12)]
        if not bool(v4.all()):
            a = self.addresses
            for i in np.flatnonzero(~v4).tolist():
                keys[i] = pack_key(a.packed(int(src[i])), int(sport[i]), a.packed(int(dst[i])), int(dport[i]))
        return keys

    def take(self, idx: Any) -> Columns:
        """The packets at ``idx`` (an index array or mask), in that order."""
        return Columns(addresses=self.addresses, **{k: v[idx] for k, v in self.arrays().items()})


def empty_columns(addresses: AddressTable) -> Columns:
    arrays: dict[str, Any] = {k: np.zeros(0, dtype=t) for k, t in DTYPES.items()}
    return Columns(addresses=addresses, **arrays)


def join_columns(parts: list[dict[str, Any]], addresses: AddressTable) -> Columns:
    """Column pieces (dicts of arrays) -> one Columns, in order."""
    if not parts:
        return empty_columns(addresses)
    arrays: dict[str, Any]
    if len(parts) == 1:
        arrays = {k: np.asarray(parts[0][k], dtype=t) for k, t in DTYPES.items()}
    else:
        arrays = {k: np.concatenate([p[k] for p in parts]).astype(t, copy=False) for k, t in DTYPES.items()}
    return Columns(addresses=addresses, **arrays)


def _records_to_arrays(recs: list[PacketRecord], addrs: AddressTable) -> dict[str, Any]:
    """Reference-decoded packet records -> column arrays."""
    n = len(recs)
    out: dict[str, Any] = {
        "ts": np.fromiter((r.ts for r in recs), np.float64, n),
        "version": np.fromiter((r.version for r in recs), np.int8, n),
        "src": np.fromiter((addrs.id_of(r.src) for r in recs), np.int64, n),
        "dst": np.fromiter((addrs.id_of(r.dst) for r in recs), np.int64, n),
        "ipid": np.fromiter((-1 if r.ipid is None else r.ipid for r in recs), np.int32, n),
    }
    for name, attr in (("sport", "sport"), ("dport", "dport"), ("flags", "flags"), ("seq", "seq"), ("ack", "ack"),
                       ("ttl", "ttl"), ("window", "window"), ("payload", "payload_len"), ("optlen", "opt_len")):
        out[name] = np.fromiter((getattr(r, attr) for r in recs), DTYPES[name], n)
    return out


def _is_plain_pcap(path: Path) -> tuple[str, float, int] | None:
    """(endian, tick, linktype) of an uncompressed classic pcap with a sound header, else None."""
    try:
        with path.open("rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:4] not in PCAP_MAGIC:
        return None
    endian, tick = PCAP_MAGIC[head[:4]]
    major, _minor, _tz, _sig, _snaplen, network = struct.unpack_from(endian + "HHiIII", head, 4)
    if major != 2:
        return None
    return endian, tick, network & 0x0FFFFFFF


def _scan(buf: bytearray, pos: int, have: int, want: int, unpack: Any) -> tuple[I8, int, bool]:
    """Offsets of up to ``want`` whole records in buf[pos:have]: (offsets, where it stopped, absurd length).

    It stops early at a record that is not all in the buffer; the caller reads more, or at the end of
    the file counts it as _read_pcap does. The loop only follows the lengths (the buffer has ROW spare
    bytes, so a cut header is read from them and fails the bound); a record longer than MAX_RECORD
    ends the chain where _read_pcap stops, found afterwards over all the lengths at once."""
    offs: list[int] = []
    app = offs.append
    for _ in itertools.repeat(None, want):
        nxt = pos + 16 + unpack(buf, pos + 8)[0]
        if nxt > have:
            break
        app(pos)
        pos = nxt
    o = np.array(offs, dtype=np.int64)
    if len(o):
        incl = np.diff(o, append=pos) - 16
        big = np.flatnonzero(incl > MAX_RECORD)
        if len(big):
            j = int(big[0])
            return o[:j], int(o[j]), True
    absurd = pos + 16 <= have and unpack(buf, pos + 8)[0] > MAX_RECORD
    return o, pos, absurd


def _layout(endian: str, ip: int) -> np.dtype[Any]:
    """Structured view of a ROW-byte record whose IPv4 header (no options) starts ``ip`` bytes into the frame."""
    e = "<" if endian == "<" else ">"
    o = 16 + ip
    return np.dtype({
        "names": ["sec", "frac", "incl", "vhl", "tot", "ipid", "frag", "ttl", "proto", "src", "dst",
                  "sport", "dport", "seq", "ack", "offx2", "flags", "win"],
        "formats": [e + "u4", e + "u4", e + "u4", "u1", ">u2", ">u2", ">u2", "u1", "u1", ">u4", ">u4",
                    ">u2", ">u2", ">u4", ">u4", "u1", "u1", ">u2"],
        "offsets": [0, 4, 8, o, o + 2, o + 4, o + 6, o + 8, o + 9, o + 12, o + 16,
                    o + 20, o + 22, o + 24, o + 28, o + 32, o + 33, o + 34],
        "itemsize": ROW,
    })


class SliceReader:
    """The input as slices of at most ``slice_frames`` frames (iterate once), and the totals so far:
    frames, non-TCP and malformed counts, the latest frame's time (``end_ts``) and ``FileStats``."""

    def __init__(self, paths: list[Path], slice_frames: int, frame_info: bool = False,
                 keep_non_tcp: bool = False) -> None:
        """``frame_info``: each slice also has ``frame_ts`` and ``at``; ``keep_non_tcp``: IP frames that are
        not TCP (decode reason ``non_tcp``) are handed over in ``others`` instead of counted."""
        self.paths = [Path(p) for p in paths]
        self.slice_frames = max(1, int(slice_frames))
        self.frame_info = frame_info or keep_non_tcp
        self.keep_non_tcp = keep_non_tcp
        self.addresses = AddressTable()
        self.files: list[FileStats] = []
        self.frames = 0
        self.non_tcp = 0
        self.malformed: Counter[str] = Counter()
        self.end_ts = float("-inf")

    @property
    def bytes_read(self) -> int:
        """Of the input so far (progress)."""
        return sum(st.bytes_read for st in self.files)

    def __iter__(self) -> Iterator[Columns]:
        for path in self.paths:
            st = FileStats(str(path))
            self.files.append(st)
            info = _is_plain_pcap(path)
            if info is not None and info[2] in _FAST_LINKTYPES:
                yield from self._pcap(path, st, *info)
            else:
                yield from self._generic(path, st)
            for reason, count in st.errors.items():
                self.malformed[reason] += count

    def _count_reason(self, reason: str, frame: OtherFrame, others: list[OtherFrame]) -> None:
        if reason == "non_tcp" and self.keep_non_tcp:
            others.append(frame)
        elif reason in NON_TCP_REASONS:
            self.non_tcp += 1
        else:
            self.malformed[reason] += 1

    def _slice(self, parts: list[dict[str, Any]], frames: int) -> Columns:
        """The pieces as one slice; ``parts`` is emptied, so that the slice is the only copy."""
        cols = join_columns(parts, self.addresses)
        if self.frame_info:
            cols.frame_ts = np.concatenate([p["_frame_ts"] for p in parts]) if parts else np.zeros(0)
            cols.at = np.concatenate([p["_at"] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
            cols.others = [f for p in parts for f in p["_others"]]
        parts.clear()
        cols.frames = frames
        cols.end_ts = self.end_ts
        self.frames += frames
        return cols

    def decode_batch(self, frames: list[tuple[float, int, bytes]]) -> Columns:
        """Frames read already (a live source's batch) as one slice, decoded as a file's frames are: all
        at once when they share a link type the columns read, else frame by frame."""
        kinds = {lt for _t, lt, _d in frames}
        linktype = kinds.pop() if len(kinds) == 1 else -1
        if linktype not in _FAST_LINKTYPES:
            return next(self._frames(iter(frames), len(frames)))
        # the frames behind 16-byte record headers (only the captured length is read), as in a pcap file
        buf = bytearray(b"".join(_LIVE_HEAD.pack(0, 0, len(d), len(d)) + d for _t, _lt, d in frames)) + bytes(ROW)
        lens = np.fromiter((len(d) for _t, _lt, d in frames), np.int64, len(frames))
        offs = np.cumsum(lens + 16) - (lens + 16)
        ts = np.fromiter((t for t, _lt, _d in frames), np.float64, len(frames))
        part = self._decode_chunk(buf, np.frombuffer(buf, dtype=np.uint8), offs, "<", 0.0, linktype, 0, ts)
        return self._slice([part], len(frames))

    def _generic(self, path: Path, st: FileStats) -> Iterator[Columns]:
        """Any capture: the reference framer and decoder, frame by frame."""
        return self._frames(read_frames(path, st), self.slice_frames)

    def _frames(self, source: Iterator[tuple[float, int, bytes]], slice_frames: int) -> Iterator[Columns]:
        """Frames from ``source`` through the reference decoder, in slices of ``slice_frames``."""
        recs: list[PacketRecord] = []
        parts: list[dict[str, Any]] = []
        frames = 0
        info = self.frame_info
        times: list[float] = []  # frame_info: every frame's time, each record's frame, the kept others
        at: list[int] = []
        others: list[OtherFrame] = []

        def part() -> None:
            got = _records_to_arrays(recs, self.addresses)
            if info:
                got.update(_frame_ts=np.asarray(times, dtype=np.float64), _at=np.asarray(at, dtype=np.int64),
                           _others=others[:])
                times.clear()
                at.clear()
                others.clear()
            parts.append(got)
            recs.clear()

        for ts, linktype, data in source:
            if ts > self.end_ts:
                self.end_ts = ts
            if info:
                times.append(ts)
            rec = decode_frame(ts, linktype, data)
            if isinstance(rec, str):
                self._count_reason(rec, (frames, ts, linktype, data), others)
            else:
                recs.append(rec)
                if info:
                    at.append(frames)
                if len(recs) == CHUNK:  # few records as objects at a time
                    part()
            frames += 1
            if frames == slice_frames:
                part()
                yield self._slice(parts, frames)
                frames = 0
        if frames:
            part()
            yield self._slice(parts, frames)

    def _pcap(self, path: Path, st: FileStats, endian: str, tick: float, linktype: int) -> Iterator[Columns]:
        """A classic pcap: blocks into one buffer, framed by _scan, decoded by _decode_chunk."""
        unpack = struct.Struct(endian + "I").unpack_from
        buf = bytearray(BLOCK + ROW)  # ROW spare bytes: every record's first ROW bytes lie in the buffer
        arr = np.frombuffer(buf, dtype=np.uint8)
        view = memoryview(buf)
        base = 24  # file offset of buf[0]
        have = pos = 0
        eof = False
        parts: list[dict[str, Any]] = []
        frames = 0
        with path.open("rb") as fh:
            fh.seek(24)
            while True:
                while not eof and have < BLOCK:
                    got = fh.readinto(view[have:BLOCK])
                    if not got:
                        eof = True
                    have += got or 0
                o, end, absurd = _scan(buf, pos, have, min(self.slice_frames - frames, CHUNK), unpack)
                if len(o):
                    parts.append(self._decode_chunk(buf, arr, o, endian, tick, linktype, frames))
                    frames += len(o)
                    st.frames += len(o)
                    st.bytes_read += end - pos
                pos = end
                if frames == self.slice_frames:
                    yield self._slice(parts, frames)
                    frames = 0
                    continue
                if len(o) and not absurd:
                    continue  # CHUNK records done: more may be in the buffer
                stop = ""
                if absurd:
                    stop = "absurd_record_length"
                elif eof:
                    if have - pos >= 16:
                        stop = "truncated_record"
                    elif have > pos:
                        stop = "truncated_record_header"
                    else:
                        break
                if stop:
                    st.error(stop)
                    st.stopped_at = base + pos
                    break
                # the next record is not all in the buffer: keep its bytes, read more
                arr[:have - pos] = arr[pos:have]
                base += pos
                have -= pos
                pos = 0
        view.release()
        if frames:
            yield self._slice(parts, frames)

    def _decode_chunk(self, buf: bytearray, arr: npt.NDArray[np.uint8], offs: I8, endian: str, tick: float,
                      linktype: int, base: int, times: F8 | None = None) -> dict[str, Any]:
        """The TCP packets among the records at ``offs`` (frames ``base``... of the slice) as column
        arrays, counting the other frames (or keeping them: ``keep_non_tcp``). ``times``: the frames'
        times when the caller has them (a live batch), else they are read from the record headers."""
        m = len(offs)
        others: list[OtherFrame] = []
        rows = np.lib.stride_tricks.sliding_window_view(arr, ROW)[offs]
        e = "<" if endian == "<" else ">"
        hdr = rows.view(np.dtype({"names": ["sec", "frac", "incl"], "formats": [e + "u4"] * 3,
                                  "offsets": [0, 4, 8], "itemsize": ROW})).ravel()
        ts = hdr["sec"].astype(np.float64) + hdr["frac"].astype(np.float64) * tick if times is None else times
        incl = hdr["incl"].astype(np.int64)
        self.end_ts = max(self.end_ts, float(ts.max()))
        done = np.zeros(m, dtype=bool)  # decoded here (as TCP or as a non-TCP reason)
        tcp = np.zeros(m, dtype=bool)
        cols: dict[str, Any] = {}  # only rows where tcp is set are meaningful

        def be16(at: int) -> I8:
            return (rows[:, at].astype(np.int64) << 8) | rows[:, at + 1]

        candidates: list[tuple[int, npt.NDArray[np.bool_]]] = []
        if linktype == LINKTYPE_ETHERNET:
            et = be16(28)
            big = incl >= 14
            vlan = np.isin(et, list(VLAN_TYPES))
            inner = be16(32)
            candidates.append((14, big & (et == 0x0800)))
            candidates.append((18, big & vlan & (incl >= 18) & (inner == 0x0800)))
            non_ip = big & (et != 0x0800) & (et != 0x86DD) & ~vlan
            done |= non_ip
            self.non_tcp += int(non_ip.sum())
            del et, vlan, inner, big
        elif linktype == LINKTYPE_LINUX_SLL:
            candidates.append((16, (incl >= 16) & (be16(30) == 0x0800)))
        elif linktype == LINKTYPE_LINUX_SLL2:
            candidates.append((20, (incl >= 20) & (be16(16) == 0x0800)))
        elif linktype in _RAW_TYPES:
            candidates.append((0, incl >= 1))
        for ip, cand in candidates:
            if not cand.any():
                continue
            v = rows.view(_layout(endian, ip)).ravel()
            ok = cand & (v["vhl"] == 0x45) & (incl >= ip + 20)
            proto = v["proto"]
            other = ok & (proto != 6)
            done |= other
            if self.keep_non_tcp:
                for i in np.flatnonzero(other).tolist():
                    o = int(offs[i])
                    others.append((base + i, float(ts[i]), linktype, bytes(buf[o + 16:o + 16 + int(incl[i])])))
            else:
                self.non_tcp += int(other.sum())
            tot = v["tot"].astype(np.int64)
            l4 = ip + 20
            l4_len = np.where(tot != 0, tot - 20, incl - l4)
            thl = (v["offx2"] >> 4).astype(np.int64) * 4
            payload = l4_len - thl
            good = (ok & (proto == 6) & ((v["frag"] & 0x1FFF) == 0) & (l4_len >= 0) & (incl >= l4 + 20)
                    & (thl >= 20) & (payload >= 0))
            if not good.any():
                continue
            done |= good
            fields: dict[str, Any] = {"payload": payload, "optlen": thl - 20}
            for name, src in (("src", "src"), ("dst", "dst"), ("sport", "sport"), ("dport", "dport"),
                              ("flags", "flags"), ("seq", "seq"), ("ack", "ack"), ("ipid", "ipid"), ("ttl", "ttl"),
                              ("window", "win")):
                fields[name] = v[src]
            if not cols:  # the first layout with packets: whole columns, no masking
                cols["version"] = np.full(m, 4, dtype=np.int8)
                for name, val in fields.items():
                    cols[name] = val.astype(DTYPES[name])
            else:
                for name, val in fields.items():
                    cols[name] = np.where(good, val, cols[name]).astype(DTYPES[name], copy=False)
                cols["version"][good] = 4
            tcp |= good
        for name in _FIELDS:
            if name not in cols:
                cols[name] = np.zeros(m, dtype=DTYPES[name])
        rest = np.nonzero(~done)[0]
        if len(rest):
            recs: list[PacketRecord] = []
            where: list[int] = []
            for i, t, o, k in zip(rest.tolist(), ts[rest].tolist(), offs[rest].tolist(), incl[rest].tolist(),
                                  strict=True):
                data = bytes(buf[o + 16:o + 16 + k])
                rec = decode_frame(t, linktype, data)
                if isinstance(rec, str):
                    self._count_reason(rec, (base + i, t, linktype, data), others)
                else:
                    recs.append(rec)
                    where.append(i)
            if recs:
                idx = np.asarray(where, dtype=np.int64)
                tcp[idx] = True
                for k, arrv in _records_to_arrays(recs, self.addresses).items():
                    if k != "ts":
                        cols[k][idx] = arrv
        if bool(tcp.all()):
            cols["ts"] = ts
            out = cols
            keep = np.arange(m, dtype=np.int64)
        else:
            keep = np.nonzero(tcp)[0]
            out = {"ts": ts[keep]}
            for k in _FIELDS:
                out[k] = cols[k][keep]
        if self.frame_info:
            others.sort()  # the fast path's and the reference decoder's, in frame order
            out.update(_frame_ts=ts, _at=base + keep, _others=others)
        return out


def read_columns(paths: list[Path], slice_frames: int = 1 << 62) -> Columns:
    """Read and decode every file in turn into one set of columns (input order kept)."""
    reader = SliceReader(paths, slice_frames)
    parts = [s.arrays() for s in reader]
    cols = join_columns(parts, reader.addresses)
    cols.frames = reader.frames
    cols.non_tcp = reader.non_tcp
    cols.malformed = reader.malformed
    cols.end_ts = reader.end_ts
    cols.files = reader.files
    return cols
