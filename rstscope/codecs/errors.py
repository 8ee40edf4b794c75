"""Typed decoding errors, so a consumer can route a bad record to the dead-letter topic by reason."""

from __future__ import annotations


class CodecError(ValueError):
    """A record that cannot be decoded. ``reason`` is a short stable name for counters."""

    reason = "malformed"


class UnknownSchemaVersion(CodecError):
    reason = "unknown_schema_version"


class MalformedRecord(CodecError):
    reason = "malformed_record"
