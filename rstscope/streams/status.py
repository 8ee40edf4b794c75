"""What a worker reports about its inputs, shared by the connection stage and the metrics collector.

A module of its own so that the collector (rstscope/streams/metrics.py) and the stage
(`ConnectionStage.edge_status`, optionally `partition_status`) agree on typed shapes without importing
each other: the collector calls these methods when the stage has them, so the stage's internals can
change without breaking a scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple, Protocol


class EdgeStatus(NamedTuple):
    """One edge producer as one packets partition of this worker sees it."""

    partition: int
    edge: str  # the producer id its watermarks carry (`rstscope edge --source-id`)
    watermark: float  # seconds since the epoch: the latest event time this edge promised on this partition
    eof: bool  # the edge sent its end-of-input watermark here
    idle: bool  # nothing from this edge for a while on this partition (its event time does not advance)
    late: int  # its packets this partition counted late (their window had closed)


class EdgeStatusSource(Protocol):
    """What the collector calls on the connection stage, when the stage has it."""

    def edge_status(self) -> Iterable[EdgeStatus]: ...


class PartitionStatus(NamedTuple):
    """One packets partition of this worker: what its connection table and ack queue hold now."""

    partition: int
    connections_open: int | None  # connections open in its table (None: the stage does not say)
    messages_unacked: int | None  # its messages consumed but not acked yet
    windows_open: int | None  # event-time windows that still hold state (and pin their first openers)
    watermark: float  # the partition's event time, seconds since the epoch (-inf: none yet)
    table_counters: Mapping[str, int]  # its table's rule counters (no_syn, late, ..., multi_syn, incomplete)


class PartitionStatusSource(Protocol):
    """A stage that reports its partitions itself (else the collector reads ``ConnectionStage.parts``)."""

    def partition_status(self) -> Iterable[PartitionStatus]: ...
