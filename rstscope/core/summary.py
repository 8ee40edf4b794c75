"""The run summary: what `rstscope analyze --format json` prints and what the workers report.

Key names are an interface other tools read (see docs/wire-formats.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rstscope.config import MODE_WINDOW
from rstscope.core.classify import EVIDENCE_SYN_ONLY, SCANNERS, SIGNATURES, STAGES, TAGS
from rstscope.core.rollup import share
from rstscope.core.table import AFTER_CLOSE, AFTER_IDLE, BEYOND_MAX, EXCLUSIONS, LATE, NO_SYN

CONNECTION_EXCLUSIONS = EXCLUSIONS
PACKET_EXCLUSIONS = (NO_SYN, "non_tcp", "malformed", LATE)
# Packets a connection did not take because it was decided already (counted, never silent).
PACKET_COUNTS = ("read", "tcp", "client_to_server", "sampled", "server_to_client", "other_traffic",
                 "unsampled", BEYOND_MAX, AFTER_CLOSE, AFTER_IDLE)


@dataclass
class Summary:
    """Counts over classified connection records plus every exclusion, by reason."""

    stages: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    signatures: Counter[str] = field(default_factory=Counter)
    scanners: Counter[str] = field(default_factory=Counter)
    injected: int = 0
    injected_syn_only: int = 0  # of which the SYN was the only packet to compare with (a lead, not a verdict)
    excluded: Counter[str] = field(default_factory=Counter)
    packets: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    mode: str = MODE_WINDOW  # the method that decided the connections (window: the blog's; idle: labelled)

    def count(self, record: Mapping[str, Any], n: int = 1) -> None:
        """Count a record (``n`` identical ones: the batch engine counts groups)."""
        self.stages[record["stage"]] += n
        for t in record["tags"]:
            self.tags[t] += n
        if record["signature"]:
            self.signatures[record["signature"]] += n
        if record.get("scanner"):
            self.scanners[record["scanner"]] += n
        if record.get("injected"):
            self.injected += n
            if record.get("evidence") == EVIDENCE_SYN_ONLY:
                self.injected_syn_only += n

    def take_counters(self, gate: Mapping[str, int], table: Mapping[str, int]) -> None:
        """The gate's and the table's counters (both run core.table.step; what the gate dropped never
        reaches the table, so the two add up). ``packets["tcp"]`` must be set first."""
        for k in ("server_to_client", "other_traffic", "unsampled", "sampled"):
            self.packets[k] = gate.get(k, 0)
        for k in (BEYOND_MAX, AFTER_CLOSE, AFTER_IDLE):
            self.packets[k] = gate.get(k, 0) + table.get(k, 0)
        self.packets["client_to_server"] = (
            self.packets["tcp"] - gate.get("server_to_client", 0) - gate.get("other_traffic", 0))
        for k in (NO_SYN, LATE):
            self.excluded[k] = gate.get(k, 0) + table.get(k, 0)
        for k in EXCLUSIONS:
            self.excluded[k] = table.get(k, 0)

    @property
    def connections(self) -> int:
        return sum(self.stages.values())

    def to_dict(self) -> dict[str, Any]:
        total = self.connections
        return {
            "mode": self.mode,
            "connections": total,
            "stages": {s: self.stages.get(s, 0) for s in STAGES},
            "shares": {s: share(self.stages.get(s, 0), total, 4) for s in STAGES},
            "tags": {t: self.tags.get(t, 0) for t in TAGS},
            "signatures": {s: self.signatures.get(s, 0) for s in SIGNATURES},
            "scanners": {s: self.scanners.get(s, 0) for s in SCANNERS},
            "injected": self.injected,
            "injected_syn_only": self.injected_syn_only,
            "excluded": {r: self.excluded.get(r, 0) for r in (*CONNECTION_EXCLUSIONS, *PACKET_EXCLUSIONS)}
            | {k: v for k, v in sorted(self.excluded.items()) if k not in CONNECTION_EXCLUSIONS + PACKET_EXCLUSIONS},
            "malformed": dict(sorted(self.malformed.items())),
            "packets": {k: self.packets.get(k, 0) for k in PACKET_COUNTS},
        }
