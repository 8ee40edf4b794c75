"""Change alerts: a network's stage share departs from its own baseline at the same time of day.

Rollup rows (wire format v1) are summed into units of ``AlertParams.unit_s`` per network (dimension,
key). Each unit is judged, stage by stage (no_match excepted: its share is 100 minus the others', so
its fall is the mirror of their rises), against the same unit of the day on the previous
``baseline_days`` days that have enough connections: robust z = (share - median) /
max(1.4826 MAD, binomial sd at this unit's count, SD_FLOOR_PP). A unit departs when |z| and the change
in share points both reach their thresholds. Departing units open an alert, grow it while they keep
departing in the same direction, and ``close_after`` units that do not depart close it. A departure at
a time of day where closed alerts of the same kind covered ``recurring_days`` previous days is a
recurring pattern: one recurring alert, kept open while the pattern keeps coming back at least once a
period. docs/insights.md states the method and its evaluation.

Pure: no I/O. Usable offline (:func:`detect`) and incrementally (:class:`AlertDetector`, fed by a
stream of rollup rows and advanced by a watermark).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rstscope.config import AlertParams
from rstscope.core.classify import NO_MATCH, STAGES
from rstscope.core.rollup import BUCKET_S, DIMENSIONS, ROLLUP_VERSION, TCP, transport_of
from rstscope.insights.model import CLOSED, FALL, OPEN, RISE, Alert, AlertEvidence, alert_id

DAY_S = 86400
JUDGED_STAGES = tuple(s for s in STAGES if s != NO_MATCH)
MAD_SCALE = 1.4826  # MAD of a normal sample times this estimates its standard deviation
SD_FLOOR_PP = 1.0  # share points: the noise assumed at least, so a flat baseline does not make z infinite
HYSTERESIS = 0.5  # an open alert continues on units departing by this fraction of both thresholds
Network = tuple[str, str]  # (dimension, key)
# Alerts are judged on TCP rows only (docs/insights.md): the thresholds were set on TCP, QUIC's stages mean
# other things, and an alert (wire format v1, its id) names no transport. Other rows are counted and skipped.
TRANSPORT = TCP


@dataclass(slots=True)
class _Open:
    """An alert being built: the running sums of its departing units."""

    dimension: str
    key: str
    stage: str
    start: int
    direction: str
    recurring: bool
    last_end: int = 0  # end of its last departing unit
    normal_run: int = 0  # consecutive units since then that did not depart
    connections: int = 0
    stage_connections: int = 0
    baseline_connections: int = 0
    baseline_stage_connections: int = 0
    baseline_days: int = 0
    weighted_median: float = 0.0  # sum over units of median share x unit connections
    units: int = 0
    score: float = 0.0


@dataclass(slots=True)
class _Net:
    """One network's recent buckets and alert state."""

    buckets: dict[int, dict[str, int]] = field(default_factory=dict)  # bucket_start -> stage counts
    name: str = ""
    name_ts: int = -1
    first_unit: int | None = None  # first unit with a non-late row: judging starts here
    next_unit: int | None = None  # the next unit to judge
    open: dict[str, _Open] = field(default_factory=dict)  # stage -> its open alert
    episodes: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)  # stage -> closed (start, end, dir)


@dataclass(frozen=True, slots=True)
class _Judgement:
    n: int
    c: int
    share: float
    median: float
    z: float
    base_n: int
    base_c: int
    base_days: int


class AlertDetector:
    """Judges units of rollup rows as the watermark advances; keeps every alert's latest version.

    ``stats`` counts everything seen and every reason something was not judged: rows, other_transport
    (rows of another transport than ``TRANSPORT``, left out), bad_rows, late_rows (a row for a unit that
    was already judged: it updates the history later baselines are made of, but nothing is judged
    again), units_judged, units_small (fewer than min_connections),
    units_no_baseline (fewer than min_baseline_days baseline days), departures, alerts_opened,
    alerts_closed, recurring (recurring alerts opened), networks_dropped.
    """

    def __init__(self, params: AlertParams, bucket_s: int = BUCKET_S) -> None:
        if bucket_s <= 0 or params.unit_s % bucket_s or DAY_S % params.unit_s:
            raise ValueError(f"alerts: unit_s ({params.unit_s}) must be a multiple of the bucket "
                             f"({bucket_s} s) and divide a day")
        self.params = params
        self.bucket_s = bucket_s
        self.stats: Counter[str] = Counter()
        self.watermark: int | None = None  # every unit ending at or before this was judged
        self.newest_unit: int | None = None
        self._nets: dict[Network, _Net] = {}
        self._alerts: dict[str, Alert] = {}

    # ---- input -----------------------------------------------------------------------------------
    def add_row(self, row: Mapping[str, Any]) -> None:
        """Take one rollup row; a later row for the same (bucket, dimension, key) replaces the earlier. A row
        of another transport than ``TRANSPORT`` is counted (``other_transport``) and left out."""
        self.stats["rows"] += 1
        if transport_of(row) != TRANSPORT:
            self.stats["other_transport"] += 1
            return
        try:
            if int(row["v"]) != ROLLUP_VERSION:
                raise ValueError("version")
            bucket = int(row["bucket_start"])
            if int(row.get("bucket_s", self.bucket_s)) != self.bucket_s or bucket % self.bucket_s:
                raise ValueError("bucket")
            dim, key = str(row["dimension"]), str(row["key"])
            if dim not in DIMENSIONS:
                raise ValueError("dimension")
            raw = row["counts"]
            counts = {s: int(raw.get(s, 0)) for s in STAGES}
            if any(v < 0 for v in counts.values()):
                raise ValueError("counts")
        except (KeyError, TypeError, ValueError, AttributeError):
            self.stats["bad_rows"] += 1
            return
        unit = bucket // self.params.unit_s * self.params.unit_s
        net = self._nets.get((dim, key))
        if net is None:
            net = self._nets[(dim, key)] = _Net()
        net.buckets[bucket] = counts
        name = row.get("name")
        if isinstance(name, str) and name and bucket >= net.name_ts:
            net.name, net.name_ts = name, bucket
        if self.watermark is not None and unit + self.params.unit_s <= self.watermark:
            self.stats["late_rows"] += 1
        elif net.first_unit is None or unit < net.first_unit:
            net.first_unit = unit
        if self.newest_unit is None or unit > self.newest_unit:
            self.newest_unit = unit

    # ---- judging ---------------------------------------------------------------------------------
    def advance(self, until: int) -> list[Alert]:
        """Judge every unit ending at or before ``until`` not judged yet; the alerts that changed."""
        u_s = self.params.unit_s
        if self.watermark is not None and until <= self.watermark:
            return []
        changed: dict[str, Alert] = {}
        for network in sorted(self._nets):
            net = self._nets[network]
            if net.next_unit is None:
                if net.first_unit is None:
                    continue
                net.next_unit = net.first_unit
            while net.next_unit + u_s <= until:
                for a in self._judge(network, net, net.next_unit):
                    changed[a.id] = a
                net.next_unit += u_s
        self.watermark = until
        self._prune()
        return sorted(changed.values(), key=lambda a: (a.start, a.dimension, a.key, a.stage, a.id))

    def alerts(self) -> list[Alert]:
        """Every alert so far, latest version, in time order."""
        return sorted(self._alerts.values(), key=lambda a: (a.start, a.dimension, a.key, a.stage, a.id))

    def _unit_counts(self, net: _Net, unit: int) -> dict[str, int]:
        out = dict.fromkeys(STAGES, 0)
        for b in range(unit, unit + self.params.unit_s, self.bucket_s):
            counts = net.buckets.get(b)
            if counts:
                for s in STAGES:
                    out[s] += counts[s]
        return out

    def _judge(self, network: Network, net: _Net, unit: int) -> list[Alert]:
        p = self.params
        counts = self._unit_counts(net, unit)
        n = sum(counts.values())
        verdicts: dict[str, _Judgement] = {}
        if n < p.min_connections:
            self.stats["units_small"] += 1
        else:
            base = [self._unit_counts(net, unit - d * DAY_S) for d in range(1, p.baseline_days + 1)]
            base = [b for b in base if sum(b.values()) >= p.min_connections]
            if len(base) < p.min_baseline_days:
                self.stats["units_no_baseline"] += 1
            else:
                self.stats["units_judged"] += 1
                for stage in JUDGED_STAGES:
                    verdicts[stage] = judge(counts[stage], n, [(b[stage], sum(b.values())) for b in base])
        changed = []
        for stage in JUDGED_STAGES:
            v = verdicts.get(stage)
            direction = None
            if v is not None:
                cur = net.open.get(stage)
                # hysteresis: a change under way need not pass the full bars again every unit
                k = HYSTERESIS if cur is not None and (v.share > v.median) == (cur.direction == RISE) else 1.0
                if abs(v.z) >= k * p.z_threshold and abs(v.share - v.median) >= k * p.min_change_pp:
                    direction = RISE if v.share > v.median else FALL
                    self.stats["departures"] += 1
            a = self._step(network, net, stage, unit, direction, v)
            if a is not None:
                changed.append(a)
        return changed

    def _step(self, network: Network, net: _Net, stage: str, unit: int, direction: str | None,
              v: _Judgement | None) -> Alert | None:
        """Move one (network, stage)'s alert state by one unit; the alert's new version if it changed."""
        p = self.params
        end = unit + p.unit_s
        cur = net.open.get(stage)
        out: Alert | None = None
        if cur is not None and v is None and not cur.recurring:
            return None  # too few connections or no baseline: no evidence either way, nothing moves
        if cur is not None and (direction is None or direction != cur.direction):
            cur.normal_run += 1
            done = (direction is not None  # the opposite change: this alert is over
                    or (not cur.recurring and cur.normal_run >= p.close_after)
                    or (cur.recurring and end - cur.last_end >= DAY_S))
            if done:
                out = self._close(network, net, stage, cur)
                cur = None
        if direction is None or v is None:
            return out
        if cur is None:
            recurring = self._recurs(net, stage, unit, direction)
            cur = _Open(network[0], network[1], stage, unit, direction, recurring)
            net.open[stage] = cur
            self.stats["alerts_opened"] += 1
            if recurring:
                self.stats["recurring"] += 1
        cur.last_end, cur.normal_run = end, 0
        cur.connections += v.n
        cur.stage_connections += v.c
        cur.baseline_connections += v.base_n
        cur.baseline_stage_connections += v.base_c
        cur.baseline_days = max(cur.baseline_days, v.base_days)
        cur.weighted_median += v.median * v.n
        cur.units += 1
        cur.score = max(cur.score, abs(v.z))
        return self._emit(net, cur, OPEN)

    def _recurs(self, net: _Net, stage: str, unit: int, direction: str) -> bool:
        """Closed alerts of the same kind covered this time of day on enough previous days.

        Only alerts shorter than a day count: one long alert (a persistent change, absorbed by the
        baseline and then flickering) covers every time of day and is no daily pattern.
        """
        eps = [e for e in net.episodes.get(stage, ()) if e[2] == direction and e[1] - e[0] < DAY_S]
        days = sum(1 for d in range(1, self.params.baseline_days + 1)
                   if any(s <= unit - d * DAY_S < e for s, e, _ in eps))
        return days >= self.params.recurring_days

    def _close(self, network: Network, net: _Net, stage: str, cur: _Open) -> Alert:
        del net.open[stage]
        net.episodes.setdefault(stage, []).append((cur.start, cur.last_end, cur.direction))
        self.stats["alerts_closed"] += 1
        return self._emit(net, cur, CLOSED)

    def _emit(self, net: _Net, cur: _Open, state: str) -> Alert:
        observed = 100.0 * cur.stage_connections / cur.connections if cur.connections else 0.0
        baseline = cur.weighted_median / cur.connections if cur.connections else 0.0
        aid = alert_id(cur.dimension, cur.key, cur.stage, cur.start, cur.recurring)
        alert = Alert(
            id=aid, dimension=cur.dimension, key=cur.key, stage=cur.stage, start=cur.start,
            end=cur.last_end if state == CLOSED else None, state=state, direction=cur.direction,
            observed_share=round(observed, 4), baseline_share=round(baseline, 4),
            size_pp=round(observed - baseline, 4), score=round(cur.score, 3),
            evidence=AlertEvidence(cur.connections, cur.stage_connections, cur.baseline_connections,
                                   cur.baseline_stage_connections, cur.baseline_days, cur.units),
            name=net.name, recurring=cur.recurring, period_s=DAY_S if cur.recurring else None,
        )
        old = self._alerts.get(aid)
        if old is not None and old.name and not alert.name:
            alert = replace(alert, name=old.name)
        self._alerts[aid] = alert
        return alert

    def _prune(self) -> None:
        """Bound memory: keep baseline_days + 1 days of buckets and episodes behind the units judged.

        Behind what was judged, not behind the newest row: a stream may bring rows days ahead of the
        units it may judge yet (a replayed backlog), and those units still need their baselines."""
        if self.watermark is None:
            return
        horizon = self.watermark - (self.params.baseline_days + 1) * DAY_S
        for network in list(self._nets):
            net = self._nets[network]
            for b in [b for b in net.buckets if b < horizon]:
                del net.buckets[b]
            for stage, eps in list(net.episodes.items()):
                kept = [e for e in eps if e[1] > horizon]
                if kept:
                    net.episodes[stage] = kept
                else:
                    del net.episodes[stage]
            if not net.buckets and not net.open and not net.episodes:
                del self._nets[network]
                self.stats["networks_dropped"] += 1


def judge(c: int, n: int, baseline: list[tuple[int, int]]) -> _Judgement:
    """Robust z of ``c`` of ``n`` connections against baseline (stage count, total) pairs.

    z = (share - median) / max(1.4826 MAD, binomial sd of a share at ``n`` connections around the
    median (Agresti-Coull: two successes and two failures added, so that a zero median and a small
    unit still have their noise), SD_FLOOR_PP). The MAD term is the
    network's own day-to-day spread; the binomial term is the noise a unit of this size has anyway.
    """
    share = 100.0 * c / n
    base_shares = [100.0 * bc / bn for bc, bn in baseline]
    median = statistics.median(base_shares)
    mad = statistics.median(abs(x - median) for x in base_shares)
    p0 = (median / 100.0 * n + 2.0) / (n + 4.0)  # Agresti-Coull: honest at small counts and zero medians
    binom = 100.0 * math.sqrt(p0 * (1.0 - p0) / n)
    z = (share - median) / max(MAD_SCALE * mad, binom, SD_FLOOR_PP)
    return _Judgement(n, c, share, median, z, sum(bn for _, bn in baseline),
                      sum(bc for bc, _ in baseline), len(baseline))


def detector(rows: Iterable[Mapping[str, Any]], params: AlertParams, bucket_s: int = BUCKET_S) -> AlertDetector:
    """Offline: a detector fed every row and advanced to the end of their last unit (its counters say
    what it judged; ``alerts()`` what it found)."""
    det = AlertDetector(params, bucket_s)
    for row in rows:
        det.add_row(row)
    if det.newest_unit is not None:
        det.advance(det.newest_unit + params.unit_s)
    return det


def detect(rows: Iterable[Mapping[str, Any]], params: AlertParams, bucket_s: int = BUCKET_S) -> list[Alert]:
    """Offline: every alert of a set of rollup rows (advanced to the end of their last unit)."""
    return detector(rows, params, bucket_s).alerts()
