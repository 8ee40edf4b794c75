"""Batch reading: capture files -> columns of decoded TCP header fields (numpy arrays).

Classic pcap files (not compressed) are framed by a tight offset loop over a memory map, then the
common frames (Ethernet, one 802.1Q tag, Linux cooked v1/v2, raw IP; IPv4 without options; TCP) are
decoded all at once: the first ``ROW`` bytes of every record are copied into one ``(n, ROW)`` byte
matrix and read through a structured dtype, so each field is a single vectorized conversion. Every
other frame (IPv6, IP options, odd link types, truncated or malformed frames) goes through the
reference per-frame decoder (``rstscope.decode.decode_frame``), and pcapng or compressed files are
framed by the reference reader (``rstscope.capture.files.read_frames``). The result is exactly what
the per-packet path decodes, frame for frame, with the same counters and ``FileStats``.
"""

from __future__ import annotations

import array
import mmap
import struct
from collections import Counter
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
from rstscope.packet import PacketRecord

F8 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int64]
ROW = 16 + 18 + 20 + 20  # record header, Ethernet + one VLAN tag, IPv4 and TCP without options
CHUNK_FRAMES = 1 << 18  # frames decoded per vectorized step
V6_BASE = 1 << 32  # address ids: IPv4 addresses are their value, IPv6 ones V6_BASE + an index

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


@dataclass
class Columns:
    """The TCP packets of a run (in input order) as columns, plus what reading and decoding counted."""

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


# Stored narrow (memory); the engine does its arithmetic on int64 where it can overflow (addresses,
# sequence numbers), and only compares the rest.
DTYPES: dict[str, Any] = {
    "ts": np.float64, "version": np.int8, "src": np.int64, "dst": np.int64, "sport": np.uint16,
    "dport": np.uint16, "flags": np.uint8, "seq": np.int64, "ack": np.int64, "ipid": np.int32, "ttl": np.uint8,
    "window": np.uint16, "payload": np.int32, "optlen": np.int16,
}
_FIELDS = tuple(k for k in DTYPES if k != "ts")


class _Parts:
    """Per-file pieces of the columns, concatenated at the end."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {k: [] for k in ("ts", *_FIELDS)}
        self.frames = 0
        self.non_tcp = 0
        self.malformed: Counter[str] = Counter()
        self.end_ts = float("-inf")

    def add_arrays(self, arrays: dict[str, Any]) -> None:
        for k, v in arrays.items():
            self.cols[k].append(np.asarray(v).astype(DTYPES[k], copy=False))


def _records_to_arrays(recs: list[PacketRecord], addrs: AddressTable) -> dict[str, Any]:
    """Reference-decoded packet records -> column arrays."""
    n = len(recs)
    out: dict[str, Any] = {
        "ts": np.fromiter((r.ts for r in recs), np.float64, n),
        "version": np.fromiter((r.version for r in recs), np.int64, n),
        "src": np.fromiter((addrs.id_of(r.src) for r in recs), np.int64, n),
        "dst": np.fromiter((addrs.id_of(r.dst) for r in recs), np.int64, n),
        "ipid": np.fromiter((-1 if r.ipid is None else r.ipid for r in recs), np.int64, n),
    }
    for name, attr in (("sport", "sport"), ("dport", "dport"), ("flags", "flags"), ("seq", "seq"), ("ack", "ack"),
                       ("ttl", "ttl"), ("window", "window"), ("payload", "payload_len"), ("optlen", "opt_len")):
        out[name] = np.fromiter((getattr(r, attr) for r in recs), np.int64, n)
    return out


def _count_reason(parts: _Parts, reason: str) -> None:
    if reason in NON_TCP_REASONS:
        parts.non_tcp += 1
    else:
        parts.malformed[reason] += 1


def _read_generic(path: Path, st: FileStats, parts: _Parts, addrs: AddressTable) -> None:
    """Any capture: the reference framer and decoder, frame by frame."""
    recs: list[PacketRecord] = []
    end = parts.end_ts
    for ts, linktype, data in read_frames(path, st):
        parts.frames += 1
        if ts > end:
            end = ts
        rec = decode_frame(ts, linktype, data)
        if isinstance(rec, str):
            _count_reason(parts, rec)
        else:
            recs.append(rec)
    parts.end_ts = end
    if recs:
        parts.add_arrays(_records_to_arrays(recs, addrs))


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


def _frame_offsets(buf: Any, n: int, endian: str, st: FileStats) -> array.array[int]:
    """Record offsets of a pcap body, with _read_pcap's stop conditions and FileStats."""
    unpack = struct.Struct(endian + "I").unpack_from
    pos = 24
    offs = array.array("q")
    app = offs.append
    last = n - 16
    while pos <= last:
        incl = unpack(buf, pos + 8)[0]
        if incl > MAX_RECORD:
            st.error("absurd_record_length")
            st.stopped_at = pos
            break
        nxt = pos + 16 + incl
        if nxt > n:
            st.error("truncated_record")
            st.stopped_at = pos
            break
        app(pos)
        pos = nxt
    else:
        if n - pos > 0:
            st.error("truncated_record_header")
            st.stopped_at = pos
    st.frames += len(offs)
    st.bytes_read += pos - 24
    return offs


def _rows(arr: npt.NDArray[np.uint8], offs: I8) -> npt.NDArray[np.uint8]:
    """The first ROW bytes of every record (zero past the end of the file) as an (n, ROW) matrix."""
    n = len(arr)
    nb = int(np.searchsorted(offs, n - ROW, "right")) if n >= ROW else 0  # offs ascend: a prefix fits
    if nb == len(offs):
        return np.lib.stride_tricks.sliding_window_view(arr, ROW)[offs]
    out = np.empty((len(offs), ROW), dtype=np.uint8)
    if nb:
        out[:nb] = np.lib.stride_tricks.sliding_window_view(arr, ROW)[offs[:nb]]
    start = int(offs[nb])
    padded = np.zeros(n - start + ROW, dtype=np.uint8)
    padded[: n - start] = arr[start:]
    out[nb:] = np.lib.stride_tricks.sliding_window_view(padded, ROW)[offs[nb:] - start]
    return out


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


def _read_pcap_fast(path: Path, st: FileStats, parts: _Parts, addrs: AddressTable,
                    endian: str, tick: float, linktype: int) -> None:
    with path.open("rb") as fh:
        size = path.stat().st_size
        if size <= 24:
            buf: Any = fh.read()
        else:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        _decode_pcap(buf, st, parts, addrs, endian, tick, linktype)
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _decode_pcap(buf: Any, st: FileStats, parts: _Parts, addrs: AddressTable,
                 endian: str, tick: float, linktype: int) -> None:
    n = len(buf)
    offs = np.frombuffer(_frame_offsets(buf, n, endian, st), dtype=np.int64)
    m = len(offs)
    parts.frames += m
    if m == 0:
        return
    arr = np.frombuffer(buf, dtype=np.uint8)
    for lo in range(0, m, CHUNK_FRAMES):  # bounded temporaries: peak memory does not grow with the file
        _decode_chunk(buf, arr, offs[lo:lo + CHUNK_FRAMES], parts, addrs, endian, tick, linktype)


def _decode_chunk(buf: Any, arr: npt.NDArray[np.uint8], offs: I8, parts: _Parts, addrs: AddressTable,
                  endian: str, tick: float, linktype: int) -> None:
    m = len(offs)
    rows = _rows(arr, offs)
    e = "<" if endian == "<" else ">"
    hdr = rows.view(np.dtype({"names": ["sec", "frac", "incl"], "formats": [e + "u4"] * 3,
                              "offsets": [0, 4, 8], "itemsize": ROW})).ravel()
    ts = hdr["sec"].astype(np.float64) + hdr["frac"].astype(np.float64) * tick
    incl = hdr["incl"].astype(np.int64)
    parts.end_ts = max(parts.end_ts, float(ts.max()))
    done = np.zeros(m, dtype=bool)  # decoded here (as TCP or as a non-TCP reason)
    tcp = np.zeros(m, dtype=bool)
    cols: dict[str, I8] = {}  # only rows where tcp is set are meaningful

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
        parts.non_tcp += int(non_ip.sum())
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
        parts.non_tcp += int(other.sum())
        tot = v["tot"].astype(np.int64)
        l4 = ip + 20
        l4_len = np.where(tot != 0, tot - 20, incl - l4)
        thl = (v["offx2"].astype(np.int64) >> 4) * 4
        payload = l4_len - thl
        good = (ok & (proto == 6) & ((v["frag"] & 0x1FFF) == 0) & (l4_len >= 0) & (incl >= l4 + 20)
                & (thl >= 20) & (payload >= 0))
        if not good.any():
            continue
        done |= good
        fields: dict[str, Any] = {"version": 4, "payload": payload, "optlen": thl - 20}
        for name, src in (("src", "src"), ("dst", "dst"), ("sport", "sport"), ("dport", "dport"),
                          ("flags", "flags"), ("seq", "seq"), ("ack", "ack"), ("ipid", "ipid"), ("ttl", "ttl"),
                          ("window", "win")):
            fields[name] = v[src]
        for name, val in fields.items():
            if name not in cols:  # the first layout with packets: whole columns, no masking
                cols[name] = np.broadcast_to(np.asarray(val, dtype=np.int64), (m,)).copy()
            else:
                cols[name] = np.where(good, val, cols[name])
        tcp |= good
    for name in _FIELDS:
        if name not in cols:
            cols[name] = np.zeros(m, dtype=np.int64)
    rest = np.nonzero(~done)[0]
    if len(rest):
        rest_ts = ts[rest].tolist()
        rest_off = offs[rest].tolist()
        rest_incl = incl[rest].tolist()
        recs: list[PacketRecord] = []
        where: list[int] = []
        for i, t, o, k in zip(rest.tolist(), rest_ts, rest_off, rest_incl, strict=True):
            rec = decode_frame(t, linktype, bytes(buf[o + 16:o + 16 + k]))
            if isinstance(rec, str):
                _count_reason(parts, rec)
            else:
                recs.append(rec)
                where.append(i)
        if recs:
            idx = np.asarray(where, dtype=np.int64)
            tcp[idx] = True
            for k, arrv in _records_to_arrays(recs, addrs).items():
                if k != "ts":
                    cols[k][idx] = arrv
    keep = np.nonzero(tcp)[0]
    out: dict[str, Any] = {"ts": ts[keep]}
    for k in _FIELDS:
        out[k] = cols[k][keep]
    parts.add_arrays(out)


def read_columns(paths: list[Path]) -> Columns:
    """Read and decode every file in turn into one set of columns (input order kept)."""
    parts = _Parts()
    addrs = AddressTable()
    files: list[FileStats] = []
    for p in paths:
        path = Path(p)
        st = FileStats(str(path))
        files.append(st)
        info = _is_plain_pcap(path)
        if info is not None and info[2] in _FAST_LINKTYPES:
            _read_pcap_fast(path, st, parts, addrs, *info)
        else:
            _read_generic(path, st, parts, addrs)
        for reason, count in st.errors.items():
            parts.malformed[reason] += count
    cat: dict[str, Any] = {}
    for k, lst in parts.cols.items():
        dtype = DTYPES[k]
        if len(lst) == 1:
            cat[k] = np.asarray(lst[0], dtype=dtype)
        else:
            cat[k] = np.concatenate(lst).astype(dtype, copy=False) if lst else np.zeros(0, dtype=dtype)
    return Columns(addresses=addrs, frames=parts.frames, non_tcp=parts.non_tcp, malformed=parts.malformed,
                   end_ts=parts.end_ts, files=files, **cat)
