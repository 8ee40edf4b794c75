"""Outliers among peers: networks whose stage profile departs most from their country's or the world's.

The score is the total variation distance between the network's stage profile and its peers' (the
peers' counts with the network's own subtracted), in share points: how many percent of the network's
connections would have to change stage for it to look like its peers. The confidence is 1 - p of
Pearson's chi-square test of homogeneity on the 2 x stages contingency table, so that a 40-point
departure resting on 30 connections ranks below the same departure resting on 30,000 only through the
confidence cut, never through the score. docs/insights.md states the method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rstscope.config import OutlierParams
from rstscope.core.classify import STAGES
from rstscope.core.rollup import Cell, shares
from rstscope.insights.model import Outlier

OUTLIER_DIMENSIONS = ("asn", "country_asn", "country")


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for a chi-square variable with ``dof`` degrees of freedom, in closed form.

    Even dof: exp(-x/2) * sum_{i<dof/2} (x/2)^i / i!. Odd dof: erfc(sqrt(x/2)) plus the half-integer
    terms. Exact (no scipy, which is not a dependency), and stable for the small dof here (<= 4).
    """
    if dof <= 0:
        return 1.0
    if x <= 0:
        return 1.0
    h = x / 2.0
    if dof % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, dof // 2):
            term *= h / i
            total += term
        return min(1.0, math.exp(-h) * total)
    total = math.erfc(math.sqrt(h))
    # sum_{i=1}^{(dof-1)/2} h^(i-1/2) / Gamma(i+1/2)
    term = math.sqrt(h) / math.gamma(1.5)
    for i in range(1, (dof - 1) // 2 + 1):
        if i > 1:
            term *= h / (i - 0.5)
        total += math.exp(-h) * term
    return min(1.0, total)


def homogeneity_confidence(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """1 - p of Pearson's chi-square test that two stage count vectors come from one distribution."""
    na = sum(a.get(s, 0) for s in STAGES)
    nb = sum(b.get(s, 0) for s in STAGES)
    n = na + nb
    if na <= 0 or nb <= 0:
        return 0.0
    stat, columns = 0.0, 0
    for s in STAGES:
        col = a.get(s, 0) + b.get(s, 0)
        if col <= 0:
            continue
        columns += 1
        for obs, row in ((a.get(s, 0), na), (b.get(s, 0), nb)):
            exp = row * col / n
            stat += (obs - exp) ** 2 / exp
    return 1.0 - chi2_sf(stat, columns - 1)


def peer_of(dimension: str, key: str) -> tuple[str, str]:
    """(key in peer_cells, peer label) of a network: its country for country_asn, else the world."""
    if dimension == "country_asn":
        cc = key.partition(":")[0]
        return cc, f"country:{cc}"
    if dimension in ("asn", "country"):
        return "", "world"
    raise ValueError(f"outliers are ranked among asn, country_asn or country, not {dimension!r}")


def rank_outliers(
    cells: Mapping[str, Cell],
    dimension: str,
    peer_cells: Mapping[str, Cell],
    params: OutlierParams,
    *,
    names: Mapping[str, str] | None = None,
    limit: int = 20,
) -> list[Outlier]:
    """The networks of ``dimension`` whose stage profile departs most from their peers', most first.

    ``cells``: each network's counts summed over the range; ``peer_cells``: for country_asn the
    country cells by country code, for asn and country the world cell under "". A network's own counts
    are subtracted from its peers'. Networks under ``params.min_connections``, without peers, or whose
    departure is less certain than ``params.confidence`` are left out. Ties: by key.
    """
    peer_of(dimension, "")  # validates the dimension up front
    names = names or {}
    found: list[Outlier] = []
    for key, cell in cells.items():
        total = cell.total
        if total < params.min_connections or total <= 0:
            continue
        peer_key, peer_label = peer_of(dimension, key)
        peer_cell = peer_cells.get(peer_key)
        if peer_cell is None:
            continue
        rest = Cell()
        rest.merge(peer_cell)
        rest.merge(cell, sign=-1)
        rest.clamp()
        if rest.total <= 0:
            continue
        own = {s: cell.counts[s] for s in STAGES}
        other = {s: rest.counts[s] for s in STAGES}
        p, q = shares(own), shares(other)
        distance = round(0.5 * sum(abs(p[s] - q[s]) for s in STAGES), 6)
        confidence = homogeneity_confidence(own, other)
        if confidence < params.confidence:
            continue
        stage = max(STAGES, key=lambda s: (abs(p[s] - q[s]), -STAGES.index(s)))
        found.append(Outlier(
            dimension=dimension, key=key, peer=peer_label, connections=total,
            peer_connections=rest.total, distance=distance, confidence=round(confidence, 6),
            stage=stage, share=p[stage], peer_share=q[stage], shares=p, peer_shares=q,
            name=names.get(key, ""),
        ))
    found.sort(key=lambda o: (-o.distance, o.key))
    return found[:max(0, limit)]
