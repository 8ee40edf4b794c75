"""Operations over runs: a column sorted so that each group's elements (a tuple's packets, a segment)
are consecutive, the runs given by where each starts (``heads``) or a mask of those (``head_mask``).
The batch engine and the edge's column gate group packets by tuple this way."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

I8 = npt.NDArray[np.int64]
F8 = npt.NDArray[np.float64]
B1 = npt.NDArray[np.bool_]


def runs_index(starts: I8, lens: I8) -> I8:
    """Positions of the runs [start, start + len) one after another."""
    total = int(lens.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    offs = np.cumsum(lens) - lens
    return np.repeat(starts - offs, lens) + np.arange(total, dtype=np.int64)


def reduce_runs(ufunc: Any, values: Any, heads: I8) -> Any:
    """ufunc.reduceat over runs that tile ``values`` (heads: where each run starts)."""
    if not len(heads):
        return np.zeros(0, dtype=np.asarray(values).dtype)
    return ufunc.reduceat(values, heads)


def cummax_runs(values: F8, head_mask: B1) -> F8:
    """Cumulative max of ``values`` restarting where ``head_mask`` is set (exact for any floats)."""
    n = len(values)
    if not n:
        return values
    down = np.nonzero((values[1:] < values[:-1]) & ~head_mask[1:])[0] + 1
    if not len(down):
        return values  # already non-decreasing within each run (the usual case: time order)
    # only the runs where time goes back need work: ranks make the max exact and integer
    run_of = np.cumsum(head_mask) - 1
    heads = np.nonzero(head_mask)[0]
    bad_runs = np.unique(run_of[down])
    ends_ = np.r_[heads[1:], n]
    lens = ends_[bad_runs] - heads[bad_runs]
    idx = runs_index(heads[bad_runs], lens)
    sub = values[idx]
    sub_run = np.repeat(np.arange(len(bad_runs), dtype=np.int64), lens)
    m = len(sub)
    order = np.argsort(sub, kind="stable")
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m, dtype=np.int64)
    best = np.maximum.accumulate(sub_run * m + rank) - sub_run * m  # the rank of each run's running max
    out = values.copy()
    out[idx] = sub[order[best]]
    return out


def before(acc: Any, head_mask: B1, fill: Any) -> Any:
    """A running value (inclusive) shifted by one within runs: the value over the earlier elements."""
    out = np.empty_like(acc)
    if len(acc):
        out[1:] = acc[:-1]
        out[head_mask] = fill
    return out


def count_before(flag: B1, head_mask: B1) -> I8:
    """Per element: how many earlier elements of its run have ``flag``."""
    cnt = np.cumsum(flag.astype(np.int64))
    run_start = np.maximum.accumulate(np.where(head_mask, np.arange(len(flag)), 0))
    base = np.where(run_start > 0, cnt[np.maximum(run_start - 1, 0)], 0)
    return cnt - flag - base
