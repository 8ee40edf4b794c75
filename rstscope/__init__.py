"""rstscope: anomalous TCP connections (resets and timeouts within the first 10 packets), per network."""

__version__ = "0.1.0"
