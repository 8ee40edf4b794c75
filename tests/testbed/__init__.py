"""rstscope's real-network tampering test bed (issue 6): see tests/testbed/bed.py and docs/signatures.md."""
