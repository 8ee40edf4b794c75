"""Batch (vectorized) reading and analysis: the same results as the per-packet path, per connection.

``reader.read_columns`` turns capture files into numpy columns of TCP header fields; ``engine.run``
runs gate, connection table, classification and rollups over them. ``rstscope analyze`` uses it by
default (``--engine batch``) and falls back to the per-packet reference when it does not apply.
"""
