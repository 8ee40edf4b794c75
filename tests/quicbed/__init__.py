"""rstscope's real-network QUIC test bed (issue 17): see tests/quicbed/bed.py and docs/quic-bed.md."""
