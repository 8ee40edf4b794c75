"""rstscope: anomalous TCP connections (resets and timeouts within the first 10 packets), per network."""

__version__ = "0.1.0"

from rstscope.pyapi import Result, analyze  # light: the analysis is imported when called

__all__ = ["Result", "__version__", "analyze"]
