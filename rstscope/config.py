"""topology.yaml: the one source of truth for topics, windows, thresholds and sampling.

Loaded once at start-up and passed down; nothing else in rstscope carries these numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).with_name("topology.yaml")


class TopologyError(ValueError):
    """topology.yaml is missing a field or holds a value that makes no sense."""


MODE_WINDOW = "window"  # the blog's method (SPEC 4): no inactivity timer, decided at the cutoff
MODE_IDLE = "idle"  # explicit, lower latency and memory: quiet for idle_s -> timeout at once
MODES = (MODE_WINDOW, MODE_IDLE)
WINDOW_S = 900  # the default window, hence rollup bucket: 15 minutes, Radar's FIFTEEN_MINUTES


@dataclass(frozen=True, slots=True)
class WindowParams:
    """How packets become connections and when a connection is decided (SPEC section 4)."""

    size_s: int = WINDOW_S  # tumbling windows of event time (15 minutes)
    max_packets: int = 10  # the first N client packets of a connection, the SYN included
    timeout_s: float = 10.0  # not ended: a timeout when its last packet lies this long before the cutoff
    grace_s: float = 10.0  # ended: emitted once the watermark passes its last packet by this much
    mode: str = MODE_WINDOW  # window | idle
    idle_s: float = 3.0  # idle mode only: quiet this long -> a timeout at once


@dataclass(frozen=True, slots=True)
class SamplingParams:
    probability: float = 1e-4
    mode: str = "random"
    hash_key: str = "rstscope"


@dataclass(frozen=True, slots=True)
class EvidenceParams:
    injected_ttl_delta: int = 2
    injected_ipid_delta: int = 2


@dataclass(frozen=True, slots=True)
class EdgeParams:
    """How workers combine the event time of many edges on one partition (docs/streaming.md)."""

    idle_s: float = 30.0  # an edge silent this long (wall clock) stops holding windows back, until it returns
    max_ahead_s: float = 300.0  # records more than this ahead of the worker's clock are refused (dead letter)


@dataclass(frozen=True, slots=True)
class RollupParams:
    """How long a worker's rollup state lives (docs/streaming.md): bounded memory and restore time."""

    retention_s: float = 7 * 86400.0  # buckets this far behind the newest one a partition counted are
    #   forgotten (their final rows stay on the compacted rollups topic); later records for them: dead letters


@dataclass(frozen=True, slots=True)
class AlertParams:
    """When a network's stage share counts as changed (docs/insights.md): robust statistics against the
    same time of day on previous days, with floors so that small networks and small moves do not alarm."""

    unit_s: int = 3600  # rollup buckets are summed into units this long before they are judged
    baseline_days: int = 7  # the baseline: the same unit of the day on this many previous days
    min_baseline_days: int = 3  # fewer days with enough connections: the unit is not judged
    min_connections: int = 200  # a unit (and each baseline day) needs this many connections to count
    min_change_pp: float = 10.0  # a change smaller than this many share points never alerts
    z_threshold: float = 4.0  # robust z: (share - baseline median) / max(1.4826 MAD, binomial sd)
    close_after: int = 2  # an open alert closes after this many consecutive normal units
    recurring_days: int = 2  # closed alerts covered this unit of the day on this many previous days: recurring


@dataclass(frozen=True, slots=True)
class OutlierParams:
    """Which networks' stage profiles stand out from their peers' (docs/insights.md)."""

    min_connections: int = 500  # networks with fewer connections over the range are not ranked
    confidence: float = 0.99  # only departures at least this certain, given the counts, are listed


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1
    retention_ms: int | None = None
    cleanup_policy: str = "delete"


@dataclass(frozen=True, slots=True)
class Topology:
    window: WindowParams = field(default_factory=WindowParams)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    evidence: EvidenceParams = field(default_factory=EvidenceParams)
    topics: dict[str, TopicSpec] = field(default_factory=dict)
    source: str = "<defaults>"
    edges: EdgeParams = field(default_factory=EdgeParams)
    alerts: AlertParams = field(default_factory=AlertParams)
    outliers: OutlierParams = field(default_factory=OutlierParams)
    rollup: RollupParams = field(default_factory=RollupParams)


# Keys of earlier releases, with what replaced them (a clear error instead of a silent change of method).
_RENAMED = {
    "idle_timeout_s": "window.timeout_s (the cutoff rule) or window.mode: idle with window.idle_s",
    "cutoff_margin_s": "window.timeout_s",
}


def _section(cls: type[Any], raw: Any, name: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise TopologyError(f"topology: '{name}' must be a mapping")
    known = set(cls.__dataclass_fields__)
    unknown = set(raw) - known
    old = sorted(k for k in unknown if k in _RENAMED)
    if old:
        raise TopologyError(f"topology: '{name}.{old[0]}' was replaced by {_RENAMED[old[0]]} (docs/method.md)")
    if unknown:
        raise TopologyError(f"topology: unknown key(s) in '{name}': {', '.join(sorted(unknown))}")
    try:
        return cls(**raw)
    except TypeError as e:
        raise TopologyError(f"topology: '{name}': {e}") from e


def load(path: Path | str | None = None) -> Topology:
    """Read a topology file: the argument, else $RSTSCOPE_TOPOLOGY, else the packaged topology.yaml."""
    p = Path(path or os.environ.get("RSTSCOPE_TOPOLOGY") or DEFAULT_PATH)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as e:
        raise TopologyError(f"topology: cannot read {p}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise TopologyError(f"topology: {p} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise TopologyError(f"topology: {p} must hold a mapping")
    window = _section(WindowParams, raw.get("window"), "window")
    sampling = _section(SamplingParams, raw.get("sampling"), "sampling")
    evidence = _section(EvidenceParams, raw.get("evidence"), "evidence")
    topics = {k: _section(TopicSpec, v, f"topics.{k}") for k, v in (raw.get("topics") or {}).items()}
    edges = _section(EdgeParams, raw.get("edges"), "edges")
    alerts = _section(AlertParams, raw.get("alerts"), "alerts")
    outliers = _section(OutlierParams, raw.get("outliers"), "outliers")
    rollup = _section(RollupParams, raw.get("rollup"), "rollup")
    topo = Topology(window, sampling, evidence, topics, str(p), edges, alerts, outliers, rollup)
    validate(topo)
    return topo


def validate(t: Topology) -> None:
    w = t.window
    if w.size_s <= 0 or w.idle_s <= 0 or w.timeout_s < 0 or w.grace_s < 0 or w.max_packets < 1:
        raise TopologyError("topology: window sizes, timeouts and max_packets must be positive")
    if w.mode not in MODES:
        raise TopologyError(f"topology: window.mode must be one of {', '.join(MODES)}")
    if t.rollup.retention_s < 2 * w.size_s:
        raise TopologyError("topology: rollup.retention_s must be at least two windows")
    if t.edges.idle_s <= 0 or t.edges.max_ahead_s <= 0:
        raise TopologyError("topology: edges.idle_s and edges.max_ahead_s must be positive")
    a = t.alerts
    if (a.unit_s <= 0 or a.baseline_days < 1 or not 1 <= a.min_baseline_days <= a.baseline_days
            or a.min_connections < 1 or a.min_change_pp < 0 or a.z_threshold <= 0 or a.close_after < 1
            or a.recurring_days < 1):
        raise TopologyError("topology: alerts: unit_s, baseline_days, min_connections, z_threshold and "
                            "close_after must be positive, 1 <= min_baseline_days <= baseline_days")
    if t.outliers.min_connections < 1 or not 0.0 < t.outliers.confidence < 1.0:
        raise TopologyError("topology: outliers: min_connections >= 1 and 0 < confidence < 1")
    if not 0.0 < t.sampling.probability <= 1.0:
        raise TopologyError("topology: sampling.probability must be in (0, 1]")
    if t.sampling.mode not in ("random", "hash"):
        raise TopologyError("topology: sampling.mode must be 'random' or 'hash'")
    for name, spec in t.topics.items():
        if spec.partitions < 1 or spec.replication < 1:
            raise TopologyError(f"topology: topics.{name}: partitions and replication must be >= 1")
