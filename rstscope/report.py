"""Human-readable output of a run: the stage table and what was excluded."""

from __future__ import annotations

from typing import Any

STAGE_LABELS = {
    "post_syn": "Post-SYN", "post_ack": "Post-ACK", "post_psh": "Post-PSH",
    "later_in_flow": "Later", "no_match": "None",
}


def stage_table(summary: dict[str, Any]) -> str:
    """The stage table, then the non-zero tags, signatures, scanners and exclusions."""
    total = summary["connections"]
    lines = [f"{'stage':<10} {'connections':>12} {'share':>8}"]
    for key, label in STAGE_LABELS.items():
        n = summary["stages"][key]
        lines.append(f"{label:<10} {n:>12,} {summary['shares'][key]:>7.2f}%")
    lines.append(f"{'total':<10} {total:>12,}")
    for title in ("tags", "signatures", "scanners"):
        items = [(k, v) for k, v in summary[title].items() if v]
        if items:
            lines.append(f"{title}: " + ", ".join(f"{k} {v:,}" for k, v in items))
    if summary.get("injected"):
        only = summary.get("injected_syn_only", 0)
        note = f" ({only:,} with only the SYN to compare: a lead, see docs/method.md)" if only else ""
        lines.append(f"injected (TTL / IP-ID evidence): {summary['injected']:,}{note}")
    excl = [(k, v) for k, v in summary["excluded"].items() if v]
    lines.append("excluded: " + (", ".join(f"{k} {v:,}" for k, v in excl) if excl else "none"))
    if summary.get("malformed"):
        lines.append("malformed: " + ", ".join(f"{k} {v:,}" for k, v in summary["malformed"].items()))
    p = summary["packets"]
    lines.append(
        f"packets: read {p['read']:,}, tcp {p['tcp']:,}, client_to_server {p['client_to_server']:,}, "
        f"sampled {p['sampled']:,}")
    return "\n".join(lines)
