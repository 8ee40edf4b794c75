"""rstscope's read side: the rollup store, the Radar-compatible HTTP API and the dashboard (issue 5)."""
