"""The edge's gate over columns: ``Gate.take`` for a slice of packets at once, with the same state after.

What a packet does at the gate depends on three things: the clock (a packet of a window older than
the latest packet's is late), its tuple's sampling (a keyed hash, the same for every packet of the
tuple), and its tuple's connection (``core.table.track``, packet after packet). Only the clock and
the learnt direction (a packet may be the server's answer to the reverse tuple's SYN) look past the
tuple. So, for packets in capture order:

1. the clock is one running maximum: late packets are counted and go no further;
2. sampling is decided once per tuple: an unsampled tuple's packets are counted (its reverse tuple
   is unsampled too, so none of them is learnt to be the server's);
3. a sampled tuple whose packets here are one connection's opening SYN and then plain joins
   (``core.table.plain_join``: no SYN, no finish by grace or idle, at most ``max_packets``) in one
   window, where the gate has no connection for it yet, is the common case: all of its packets
   leave, and its ``Track`` is ``opened`` then ``joined`` once;
4. every other tuple's packets go through ``Gate.take_in_time`` one by one, in capture order. A packet
   of those may ask for the reverse tuple's connection (learnt direction): the common-case tuples'
   connections enter the gate's table at their SYN's place in the order, before it is asked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from rstscope.core.table import LATE, ends, is_syn, joined, opened, plain_join, window_of
from rstscope.fastpath.runs import before, count_before, cummax_runs, reduce_runs
from rstscope.sampling import Gate

B1 = npt.NDArray[np.bool_]


def take_columns(gate: Gate, keys: list[bytes], ts: Any, flags: Any, seq: Any, windows: Any,
                 unknown: bool) -> B1:
    """Whether each packet leaves the edge, as ``gate.take`` would answer packet after packet (and
    with the same counters and state after): ``keys`` are their packed tuples, ``windows`` their
    ``window_of``, ``unknown`` whether no server is configured."""
    n = len(keys)
    out = np.zeros(n, dtype=bool)
    if not n:
        return out
    c = gate.counters
    # 1. the clock
    wm = np.maximum.accumulate(np.maximum(ts, gate.watermark))
    now = np.maximum(window_of(wm, gate.size).astype(np.int64), gate.current_window)
    late = windows < now
    _count(c, LATE, late)
    # 2. sampling, once per tuple
    index: dict[bytes, int] = {}
    tid = np.fromiter((index.setdefault(k, len(index)) for k in keys), np.int64, n)
    tuples = list(index)
    s = gate.sampler
    keep = np.fromiter((s.keep_packed(k) for k in tuples), bool, len(tuples))
    live = ~late
    _count(c, "unsampled", live & ~keep[tid])
    todo = np.flatnonzero(live & keep[tid])
    # 3. the common case, per tuple (its packets here, in order)
    order = todo[np.argsort(tid[todo], kind="stable")]
    t_s = tid[order]
    head_mask = np.ones(len(order), dtype=bool)
    head_mask[1:] = t_s[1:] != t_s[:-1]
    heads = np.flatnonzero(head_mask)
    f_s, ts_s, w_s = flags[order], ts[order], windows[order]
    syn = is_syn(f_s)
    lens = np.diff(np.r_[heads, len(order)])
    gap = ts_s - before(cummax_runs(ts_s, head_mask), head_mask, -np.inf)
    ended_before = count_before(ends(f_s), head_mask) > 0
    plain = head_mask | (~syn & plain_join(gap, ended_before, gate.params))
    common = (syn[heads] & (lens <= gate.max_packets) & reduce_runs(np.logical_and, plain, heads)
              & (reduce_runs(np.minimum, w_s, heads) == reduce_runs(np.maximum, w_s, heads)))
    heads_t = t_s[heads].tolist()
    w_t = w_s[heads].tolist()
    entries = gate.entries
    for i in np.flatnonzero(common).tolist():  # ... and the gate has no connection for it in that window
        e = entries.get(tuples[heads_t[i]])
        if e is not None and e.window_start == w_t[i]:
            common[i] = False
    pk = common[np.cumsum(head_mask) - 1]
    out[order[pk]] = True
    _count(c, "sampled", pk)
    # ... their Tracks: opened at the SYN, then the rest joined
    ch = np.flatnonzero(common)
    first = order[heads[ch]]  # each one's SYN, in capture order of the tuple
    last_ts = reduce_runs(np.maximum, ts_s, heads)[ch].tolist()
    any_end = reduce_runs(np.logical_or, ends(f_s), heads)[ch].tolist()
    opens = []
    params = gate.params
    for f, k, t, fl, sq, w, more, lt, ended in zip(
            first.tolist(), [tuples[t] for t in t_s[heads[ch]].tolist()], ts[first].tolist(), flags[first].tolist(),
            seq[first].tolist(), windows[first].tolist(), (lens[ch] - 1).tolist(), last_ts, any_end, strict=True):
        st = opened(t, fl, sq, w)
        if more:
            joined(st, more, lt, ended, params)
        opens.append((f, k, st))
    opens.sort(key=lambda o: o[0])
    # 4. the other tuples, packet by packet, in capture order
    rest = np.sort(order[~pk])
    o = 0
    take = gate.take_in_time
    for i, k, t, fl, sq, w in zip(rest.tolist(), [keys[i] for i in rest.tolist()], ts[rest].tolist(),
                                   flags[rest].tolist(), seq[rest].tolist(), windows[rest].tolist(), strict=True):
        while o < len(opens) and opens[o][0] < i:  # the common-case connections opened before it
            entries[opens[o][1]] = opens[o][2]
            o += 1
        out[i] = take(k, t, fl, sq, w, unknown)
    for _f, k, st in opens[o:]:
        entries[k] = st
    gate.clock(float(wm[-1]), int(now[-1]))  # the clock after the slice: take's own step, once
    return out


def _count(counters: Any, name: str, mask: B1) -> None:
    k = int(np.count_nonzero(mask))
    if k:
        counters[name] += k
