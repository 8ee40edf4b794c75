"""How every step of the local Kafka launcher reports: one error type, progress lines, tails of tool output.

Kept apart so that the jar, TLS and process modules share them without importing each other.
"""

from __future__ import annotations

import sys


class LocalKafkaError(RuntimeError):
    """Raised when the jars cannot be resolved or a node does not start or stop."""


def log(msg: str) -> None:
    """Progress on stderr: stdout of the CLI's ``start`` is only the bootstrap servers (scripts read it)."""
    print(f"[local-kafka] {msg}", file=sys.stderr, flush=True)


def tail_text(text: str, lines: int) -> str:
    """The last ``lines`` lines: what an error message quotes of a tool's or broker's output."""
    return "\n".join(text.rstrip().splitlines()[-lines:])
