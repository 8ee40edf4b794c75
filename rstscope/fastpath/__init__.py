"""Batch (vectorized) reading and analysis: the same results as the per-packet path, per connection.

``reader.SliceReader`` turns capture files into slices of numpy columns of TCP header fields;
``engine.run`` runs gate, connection table, classification and rollups over them slice by slice,
carrying over only what a slice cannot decide (memory does not grow with the input). ``rstscope
analyze`` uses it by default (``--engine batch``) and hands over to the per-packet reference where it
does not apply.
"""
