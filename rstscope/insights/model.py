"""The output contracts of the insights: one alert, one outlier. Defined once, typed; every field documented.

An alert says that one network's share of one stage moved away from its own baseline (the same time of
day on previous days). Alerts are upserts keyed by ``id``: the same alert is sent again when it grows or
closes, so the ``alerts`` topic is compacted and the store keeps the latest version of each id.

An outlier says that one network's stage profile departs from its peers' (its country's, or the
world's) over a range of time, with a confidence that accounts for how many connections it rests on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

ALERT_VERSION = 1
RISE, FALL = "rise", "fall"
OPEN, CLOSED = "open", "closed"
# The networks alerts and outliers are about: the rollup dimensions (rstscope.core.rollup.DIMENSIONS).
NETWORK_DIMENSIONS = ("world", "country", "asn", "country_asn")


def alert_id(dimension: str, key: str, stage: str, start: int, recurring: bool = False) -> str:
    """The upsert identity of an alert: stable across restarts and replays of the same rollups."""
    text = f"{dimension}|{key}|{stage}|{start}|{'r' if recurring else ''}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class AlertEvidence:
    """The counts an alert rests on, so that a reader can check it without the rollups."""

    connections: int  # connections of the network in the alert's units (start .. end or now)
    stage_connections: int  # of them, in the alert's stage
    baseline_connections: int  # connections of the network in the baseline units the alert was judged on
    baseline_stage_connections: int  # of them, in the alert's stage
    baseline_days: int  # previous days the baseline was made of
    units: int  # units (AlertParams.unit_s) the alert covers


@dataclass(frozen=True, slots=True)
class Alert:
    """One network's stage share moved away from its baseline (wire format: docs/wire-formats.md)."""

    id: str  # alert_id(dimension, key, stage, start, recurring)
    dimension: str  # world | country | asn | country_asn
    key: str  # "" (world), "MX", "8151", "MX:8151"
    stage: str  # a stage of rstscope.core.classify.STAGES
    start: int  # unix seconds: start of the first unit that departed
    end: int | None  # unix seconds: end of the last unit that departed; None while the alert is open
    state: str  # open | closed
    direction: str  # rise | fall: the share went up or down
    observed_share: float  # percent: the stage's share of the network's connections over the alert
    baseline_share: float  # percent: the baseline median share at the same time of day
    size_pp: float  # observed_share - baseline_share, in share points (signed)
    score: float  # the largest robust z of the alert's units
    evidence: AlertEvidence
    name: str = ""  # display name of the network (country or AS name), when known
    recurring: bool = False  # the same change at the same time of day on several previous days
    period_s: int | None = None  # recurring alerts: the period (86400: daily)
    v: int = ALERT_VERSION

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent on the alerts topic and returned by ``GET /rstscope/alerts``."""
        return asdict(self)

    @property
    def network(self) -> tuple[str, str]:
        return self.dimension, self.key


def alert_from_wire(obj: Mapping[str, Any]) -> Alert:
    """Parse a wire alert; a ValueError names what is wrong (the sink counts it as bad)."""
    try:
        if int(obj["v"]) != ALERT_VERSION:
            raise ValueError(f"alert version {obj['v']!r} is not {ALERT_VERSION}")
        ev = obj["evidence"]
        fields = dict(obj)
        fields["evidence"] = AlertEvidence(**{k: int(ev[k]) for k in AlertEvidence.__dataclass_fields__})
        alert = Alert(**fields)
    except (KeyError, TypeError) as e:
        raise ValueError(f"not an alert: {e}") from e
    if alert.dimension not in NETWORK_DIMENSIONS:
        raise ValueError(f"alert dimension {alert.dimension!r} is not one of {NETWORK_DIMENSIONS}")
    if alert.state not in (OPEN, CLOSED) or alert.direction not in (RISE, FALL):
        raise ValueError("alert state must be open|closed and direction rise|fall")
    return alert


@dataclass(frozen=True, slots=True)
class Outlier:
    """One network whose stage profile departs from its peers' over a range (``GET /rstscope/outliers``)."""

    dimension: str  # asn | country_asn | country
    key: str  # the network, as in rollup rows
    peer: str  # what it is compared with: "country:MX" or "world"
    connections: int  # the network's connections over the range
    peer_connections: int  # the peers' connections over the range, the network's own excluded
    distance: float  # total variation distance between the two stage profiles, in share points (0..100)
    confidence: float  # how sure (0..1) that the profiles differ, given the counts
    stage: str  # the stage that departs most
    share: float  # percent: that stage's share in the network
    peer_share: float  # percent: that stage's share among the peers
    shares: dict[str, float] = field(default_factory=dict)  # the network's share of every stage
    peer_shares: dict[str, float] = field(default_factory=dict)  # the peers' share of every stage
    name: str = ""  # display name of the network

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)
