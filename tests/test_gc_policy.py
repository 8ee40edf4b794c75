"""The worker's garbage-collector setting: what it changes, and that it changes nothing else."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator

import pytest

from rstscope import gc_policy
from rstscope.core.rollup import Cell


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_long_runs_freeze_start_up_and_collect_young_objects_less_often(restored: None) -> None:
    middle, old = gc.get_threshold()[1:]
    gc_policy.for_long_runs()
    assert gc.get_threshold() == (gc_policy.YOUNG, middle, old)
    assert gc.get_freeze_count() > 0  # start-up's objects: no longer scanned by any collection


def test_cycles_are_still_collected(restored: None) -> None:
    gc_policy.for_long_runs()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = {id(a), id(b)}
    del a, b
    gc.collect()
    assert not alive & {id(o) for o in gc.get_objects() if type(o).__name__ == "Node"}


def test_a_cell_made_without_counter_init_is_an_ordinary_counter() -> None:
    c = Cell()
    for counter in (c.counts, c.tags, c.signatures):
        assert type(counter) is Counter and counter == Counter() and counter["absent"] == 0
    c.tags.update(["rst", "rst"])
    c.counts["post_syn"] += 3
    assert c.tags == Counter(rst=2) and c.counts.most_common(1) == [("post_syn", 3)]
    assert Cell().tags is not Cell().tags  # every cell has its own


def test_paused_restores_the_collector_also_after_an_error() -> None:
    assert gc.isenabled()
    with gc_policy.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), gc_policy.paused():
        raise ValueError("a load that failed")
    assert gc.isenabled()
    gc.disable()  # paused inside a caller that disabled it itself: left disabled
    try:
        with gc_policy.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
