"""Capture sources: files (pcap, pcapng, compressed) now; live interfaces and NFLOG at the edge."""

from rstscope.capture.files import CaptureError, Frame, read_frames

__all__ = ["CaptureError", "Frame", "read_frames"]
