"""The streaming path: topic management and the Faust workers (connection and rollup agents)."""
