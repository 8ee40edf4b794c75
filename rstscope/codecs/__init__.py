"""Wire formats: packet records as versioned msgpack; connections and rollups as JSON (orjson)."""

from rstscope.codecs.errors import CodecError, MalformedRecord, UnknownSchemaVersion

__all__ = ["CodecError", "MalformedRecord", "UnknownSchemaVersion"]
