"""Where frames come from: capture files, a live interface, or an NFLOG group (through libpcap).

Every source yields batches of ``(ts, linktype, data)``. A live source yields an empty batch when
nothing arrived for a moment, so the producer can check for SIGTERM and advance event time while idle.
Live capture uses pcapy-ng (a maintained libpcap binding, manylinux wheels) and reads with
``next_batch``: one C call per batch, not per packet.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from rstscope.capture.files import FileStats, read_frames

Frame = tuple[float, int, bytes]
BATCH = 512
_META = struct.Struct("=IIII")


class Source(Protocol):
    name: str
    live: bool
    stopped: bool

    def batches(self) -> Iterator[list[Frame]]: ...

    def kernel_drops(self) -> int: ...


class PcapFiles:
    """Capture files read in order; malformed records are counted, not fatal."""

    live = False

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.name = ",".join(map(str, paths))
        self.stopped = False
        self.malformed: Counter[str] = Counter()

    def batches(self) -> Iterator[list[Frame]]:
        for path in self.paths:
            st = FileStats(str(path))
            frames: Iterator[Frame] = read_frames(path, st)
            while batch := list(islice(frames, BATCH)):  # islice: the frames are gathered in C
                yield batch
                if self.stopped and len(batch) == BATCH:  # a short one ended the file: count it below
                    return
            self.malformed.update(st.errors)
            if self.stopped:
                return

    def kernel_drops(self) -> int:
        return 0


class LiveError(Exception):
    """The device cannot be opened (no such interface, no permission, no libpcap binding)."""


CLONE_NEWNET = 0x40000000
LINKTYPE_NFLOG = 239
NFULA_TIMESTAMP = 3
SO_TIMESTAMP = 29  # Linux asm-generic value; Python's socket module does not export it
_TLV = struct.Struct("<HH")  # libpcap hands NFLOG TLV headers over in host (little-endian here) order
_TS = struct.Struct(">QQ")  # struct nfulnl_msg_packet_timestamp: big-endian seconds, microseconds


def nflog_ts(data: bytes) -> float | None:
    """The kernel's receive time from an NFLOG frame (NFULA_TIMESTAMP), if it carries one.

    libpcap stamps NFLOG packets with the time it read them, and nfnetlink_log batches messages for
    up to a second: without this, packet times would be off by up to 1 s.
    """
    off, n = 4, len(data)
    while off + 4 <= n:
        tlv_len, tlv_type = _TLV.unpack_from(data, off)
        if tlv_len < 4:
            return None
        if tlv_type & 0x7FFF == NFULA_TIMESTAMP and tlv_len >= 20:
            sec, usec = _TS.unpack_from(data, off + 4)
            return float(sec + usec * 1e-6)
        off += (tlv_len + 3) & ~3
    return None


def enable_kernel_timestamps() -> socket.socket:
    """Keep a socket with SO_TIMESTAMP open: that turns on receive timestamps for every skb (a global
    switch), which nfnetlink_log needs to send NFULA_TIMESTAMP. Close it when capture ends."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    return s


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block in network namespace ``name`` (``ip netns`` name or a path), then switch back.

    Sockets keep the namespace they were opened in: the capture handle can live in a server's
    namespace (NFLOG is per namespace) while Kafka and metrics sockets use the host's.
    Only the calling thread switches, so this must run before other threads need the old one.
    """
    if not name:
        yield
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    path = name if "/" in name else f"/run/netns/{name}"
    with open("/proc/thread-self/ns/net", "rb") as home, open(path, "rb") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise LiveError(f"setns {path}: {os.strerror(ctypes.get_errno())}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise LiveError(f"setns back: {os.strerror(ctypes.get_errno())}")


class LiveCapture:
    """A live libpcap handle: an interface (``eth0``) or an NFLOG group (``nflog:N``).

    Non-blocking reads after ``select`` with a short timeout: libpcap's NFLOG reader retries recv()
    on EINTR, so a blocking read would never see SIGTERM while no packet arrives.
    """

    live = True

    def __init__(self, device: str, bpf: str | None = None, snaplen: int = 262144,
                 buffer_bytes: int = 16 << 20, idle_s: float = 0.2, netns: str | None = None) -> None:
        try:  # imported by name: pcapy-ng ships no type stubs, and every use here is Any anyway
            pcapy: Any = importlib.import_module("pcapy")
        except ImportError as e:  # pragma: no cover - depends on the install
            raise LiveError("live capture needs pcapy-ng (pip install pcapy-ng)") from e
        self.name = device
        self.stopped = False
        self.idle_s = idle_s
        try:
            with in_netns(netns):
                h: Any = pcapy.create(device)
            # NFLOG: libpcap sizes its netlink receive buffer from the snaplen; a small snaplen
            # truncates batched NFLOG messages. Payload size is bounded by the rule (--nflog-size).
                h.set_snaplen(snaplen)
                h.set_promisc(False)
                h.set_timeout(int(idle_s * 1000))
                h.set_buffer_size(buffer_bytes)
                h.activate()
            if bpf:
                h.setfilter(bpf)
            h.setnonblock(True)
        except LiveError:
            raise
        except Exception as e:  # pcapy.PcapError has no stub; anything here means "cannot capture"
            raise LiveError(f"{device}: {e}") from e
        self.handle = h
        self.linktype = int(h.datalink())
        self.fd = int(h.getfd())
        self.tstamp_sock = enable_kernel_timestamps() if self.linktype == LINKTYPE_NFLOG else None

    def batches(self) -> Iterator[list[Frame]]:
        h, lt, meta_s = self.handle, self.linktype, _META
        while not self.stopped:
            try:
                data, meta = h.next_batch(BATCH)
            except Exception as e:  # non-blocking NFLOG read with nothing queued: EAGAIN as an error
                if "temporarily unavailable" not in str(e):
                    raise
                data, meta = b"", b""
            if not meta:
                yield []
                if not self.stopped:
                    select.select([self.fd], [], [], self.idle_s)
                continue
            batch: list[Frame] = []
            if lt == LINKTYPE_NFLOG:
                for sec, usec, off, caplen in meta_s.iter_unpack(meta):
                    frame = data[off:off + caplen]
                    batch.append((nflog_ts(frame) or sec + usec * 1e-6, lt, frame))
            else:
                for sec, usec, off, caplen in meta_s.iter_unpack(meta):
                    batch.append((sec + usec * 1e-6, lt, data[off:off + caplen]))
            yield batch

    def kernel_drops(self) -> int:
        """Packets the kernel dropped because we read too slowly (pcap_stats ps_drop)."""
        try:
            _recv, drop, _ifdrop = self.handle.stats()
        except Exception:
            return 0
        return int(drop)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.close()
        if self.tstamp_sock is not None:
            self.tstamp_sock.close()


def now() -> float:
    return time.time()
