"""Capture files through the edge in columns: the same messages as frame by frame, at a fraction of the cost.

``Edge.run`` frame by frame is the reference, and what live sources and paced replays (``--rate``)
take. A file replay takes this path instead:

1. the batch engine's reader decodes a slice of frames at once (``fastpath.reader.SliceReader``), with
   every frame's time, each TCP packet's frame, and the other IP frames raw (QUIC's, when on);
2. direction is ``Direction.codes`` over the columns, and the gate ``fastpath.gate.take_columns``:
   ``Gate.take``'s answers for the slice's packets, its common case at once and the rest packet by
   packet; the packets it admits become records all at once;
3. the records, the QUIC datagrams, the window cuts and the watermark checks are then replayed in
   frame order through the Edge's own batches (``Edge._send``, ``flush``, ``watermark``, ``_udp``), at
   the frames where the reference does them: a cut before the first frame of a new window, a
   watermark check after every ``sources.BATCH`` frames of a file and at its end.

So both paths send the same messages, byte for byte (tests/edge/test_edge_columns.py), and count the
same. What differs: a stop (SIGTERM) takes effect between slices, not between batches of frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rstscope.codecs.packet import EdgeGeo, partition_of
from rstscope.core.table import window_of
from rstscope.direction import OTHER, S2C
from rstscope.edge.sources import BATCH
from rstscope.fastpath.gate import take_columns
from rstscope.fastpath.reader import AddressTable, Columns, SliceReader
from rstscope.packet import pack_key

if TYPE_CHECKING:
    from rstscope.edge.producer import Edge, EdgeStats

SLICE_FRAMES = 32 * BATCH  # a multiple of the reference's batch: a slice starts where a batch does
CUT, RECORD, OTHER_FRAME, BATCH_END = 0, 1, 2, 3  # what happens at a frame, in this order


def run_columns(edge: Edge, paths: list[Path]) -> EdgeStats:
    """``edge.run(paths)`` for capture files (no pacing): the module docstring."""
    reader = SliceReader(paths, SLICE_FRAMES, frame_info=True, keep_non_tcp=edge.quic is not None)
    for sl in reader:
        if edge.stop:
            break
        _slice(edge, sl)
        _drain(edge, reader)
    _drain(edge, reader)  # a file's framing errors are counted once its last slice is out
    edge.finish()
    return edge.stats


def decoder(edge: Edge) -> SliceReader:
    """What decodes a source's batches of frames for ``take_batch`` (a reader without files)."""
    return SliceReader([], 1, frame_info=True, keep_non_tcp=edge.quic is not None)


def take_batch(edge: Edge, reader: SliceReader, batch: list[tuple[float, int, bytes]]) -> None:
    """A source's batch of frames (a live source's, read by libpcap) through the columns; the caller
    then does what the reference does after a batch (stale batches, delivery reports, the watermark)."""
    _slice(edge, reader.decode_batch(batch), check_at_end=False)
    _drain(edge, reader)


def _drain(edge: Edge, reader: SliceReader) -> None:
    """The reader's counts of frames that were not TCP or were malformed, moved to the edge's; and its
    IPv6 addresses forgotten (address ids live as long as a slice here), so a live edge stays bounded."""
    if reader.addresses.v6:
        reader.addresses = AddressTable()
    s = edge.stats
    if reader.non_tcp:
        s.dropped["non_tcp"] += reader.non_tcp
        reader.non_tcp = 0
    for reason, k in reader.malformed.items():
        s.dropped["malformed"] += k
        s.dropped[f"malformed:{reason}"] += k
    reader.malformed.clear()


def _slice(edge: Edge, sl: Columns, check_at_end: bool = True) -> None:
    """A slice's frames through the gate and the batches; ``check_at_end``: its last frame ends a batch
    of the reference's (the watermark check), else the caller checks after it."""
    s, gate = edge.stats, edge.gate
    assert sl.frame_ts is not None and sl.at is not None
    s.read += sl.frames
    s.tcp += len(sl)
    # -- the gate: direction over the columns, then fastpath.gate --------------------------------------
    dirs = gate.direction.codes(sl.flags, sl.src, sl.sport, sl.dst, sl.dport, sl.addresses.packed)
    for name, code in (("server_to_client", S2C), ("other_traffic", OTHER)):
        k = int(np.count_nonzero(dirs == code))
        if k:
            gate.counters[name] += k
    cand = np.flatnonzero((dirs != S2C) & (dirs != OTHER))
    keys = sl.packed_keys(cand)
    ts = sl.ts[cand]
    ok = take_columns(gate, keys, ts, sl.flags[cand], sl.seq[cand], window_of(ts, gate.size).astype(np.int64),
                      not gate.direction.configured)
    taken = np.flatnonzero(ok)
    adm = cand[taken]
    recs, parts, sizes = _records(edge, sl, adm, [keys[i] for i in taken.tolist()])
    # -- the frames where something happens, in order ---------------------------------------------
    ft = sl.frame_ts
    frames = len(ft)
    latest = np.maximum.accumulate(np.maximum(ft, edge.end_ts))  # edge.end_ts after each frame
    w = edge.window_s
    window_end = np.empty(frames)  # the reference's window_end before each frame (cut where ts passes it)
    window_end[:1] = edge.window_end
    window_end[1:] = (latest[:-1] // w + 1) * w
    cuts = np.flatnonzero(ft >= window_end)
    ends = np.flatnonzero((np.arange(frames) % BATCH == BATCH - 1) | (np.arange(frames) == frames - 1))
    if not check_at_end and len(ends) and ends[-1] == frames - 1:
        ends = ends[:-1]
    other_at = np.fromiter((f[0] for f in sl.others), np.int64, len(sl.others))
    events = np.concatenate((cuts * 4 + CUT, other_at * 4 + OTHER_FRAME, ends * 4 + BATCH_END))
    events.sort()
    pos = events >> 2
    rec_at = sl.at[adm]
    before = np.searchsorted(rec_at * 4 + RECORD, events)  # records that come before each event
    rec_end = latest[rec_at].tolist()
    r = o = 0
    for kind, at, end_ts, upto in zip((events & 3).tolist(), pos.tolist(), latest[pos].tolist(), before.tolist(),
                                      strict=True):
        if upto > r:
            _publish(edge, recs, parts, sizes, rec_end, r, upto)
            r = upto
        edge.end_ts = end_ts
        if kind == CUT:  # a new window: what waits belongs to the ones before
            edge.flush()
            edge.window_end = (float(ft[at]) // w + 1) * w
        elif kind == OTHER_FRAME:
            _i, t, linktype, data = sl.others[o]
            o += 1
            if not edge._udp(t, linktype, data):
                s.dropped["non_tcp"] += 1
        elif end_ts >= edge.next_wm:  # BATCH_END
            edge.watermark(False)
    if r < len(recs):  # records after the last event
        _publish(edge, recs, parts, sizes, rec_end, r, len(recs))
    edge.end_ts = float(latest[-1])


def _publish(edge: Edge, recs: list[list[Any]], parts: list[int], sizes: list[int], rec_end: list[float], lo: int,
             hi: int) -> None:
    """Records lo..hi-1 into their partitions' batches (``Edge._publish`` after the record is made);
    ``rec_end``: the edge's end_ts at each record (a batch it fills is sent with it)."""
    s = edge.stats
    add, send, poll = edge.batches.add, edge._send, edge.producer.poll
    sampled = s.sampled
    for i in range(lo, hi):
        sampled += 1
        p = parts[i]
        if add(p, recs[i], sizes[i]):
            edge.end_ts = rec_end[i]
            send(p)
        if not sampled & 0xFF:  # delivery reports, as often as frame by frame
            poll(0)
    s.sampled = sampled
    edge.end_ts = rec_end[hi - 1]


def _records(edge: Edge, sl: Columns, adm: Any, keys: list[bytes]) -> tuple[list[list[Any]], list[int], list[int]]:
    """The admitted packets as batch records (``codecs.packet.packet_fields``), their partitions and
    size estimates, as ``Edge._publish`` makes them one by one."""
    packed = sl.addresses.packed
    src_u, src_inv = np.unique(sl.src[adm], return_inverse=True)
    clients = [edge._client(packed(a)) for a in src_u.tolist()]  # (geo, address as it may leave)
    dst_u, dst_inv = np.unique(sl.dst[adm], return_inverse=True)
    servers = [packed(a) for a in dst_u.tolist()]
    src_i = src_inv.ravel().tolist()
    src = [clients[i][1] for i in src_i]
    dst = [servers[i] for i in dst_inv.ravel().tolist()]
    sport, dport = sl.sport[adm].tolist(), sl.dport[adm].tolist()
    ipid_a = sl.ipid[adm]
    ipid: list[int | None] = list(ipid_a.tolist())
    if bool((ipid_a < 0).any()):
        ipid = [None if v < 0 else v for v in ipid]  # type: ignore[operator]
    columns: list[list[Any]] = [sl.ts[adm].tolist(), sl.version[adm].tolist(), src, dst, sport, dport,
                                sl.flags[adm].tolist(), sl.seq[adm].tolist(), sl.ack[adm].tolist(), ipid,
                                sl.ttl[adm].tolist(), sl.window[adm].tolist(), sl.payload[adm].tolist(),
                                sl.optlen[adm].tolist()]
    if edge.geo is not None:  # then every client has one
        geos = [cast(EdgeGeo, clients[i][0]) for i in src_i]
        columns += [[g.country for g in geos], [g.asn for g in geos]]
    recs = list(map(list, zip(*columns, strict=True)))
    n = edge.partitions
    if edge.client_ip is not None:
        keys = [pack_key(a, sp, b, dp) for a, sp, b, dp in zip(src, sport, dst, dport, strict=True)]
    parts = [partition_of(k, n) for k in keys]
    sizes = [40 + 2 * len(a) for a in src]
    return recs, parts, sizes
