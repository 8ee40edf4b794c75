"""Command-line values the commands share (`analyze`, `quic`, `edge`, `edge rules`): one reading of a
comma list, a port list and a probability, so every command accepts and refuses the same spellings."""

from __future__ import annotations

import argparse


def csv_values(values: list[str] | None) -> list[str]:
    """A repeatable option's values, each maybe a comma list, flattened (blanks dropped)."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def port_list(values: list[str] | None, flag: str = "--server-port") -> list[int]:
    """Port numbers from a repeatable, comma-separated option; ValueError naming ``flag`` for a bad one."""
    out = []
    for v in csv_values(values):
        if not v.isdigit() or not 0 < int(v) < 65536:
            raise ValueError(f"{flag} {v!r} is not a port number (1..65535)")
        out.append(int(v))
    return out


def probability(text: str) -> float:
    """An argparse type: a probability in (0, 1], as a decimal or a fraction (0.0001, 1/10000)."""
    try:
        a, _, b = text.partition("/")
        p = float(a) / float(b) if b else float(a)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability (e.g. 0.0001 or 1/10000)") from None
    if not 0.0 < p <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not in (0, 1]")
    return p
