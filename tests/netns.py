"""A real capture between two network namespaces: an HTTP server, a client script, tcpdump on the server.

Shared by the pipeline tests and the no-payload test. The capture ends when the client's traffic ends
(nothing is appended to it): a connection that has not ended (no RST, no FIN) is a timeout only if the
client's own later traffic goes on for 10 s or more after it, else it is ``incomplete``, as in any
capture. The traffic is kept off a 15-minute window cutoff.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.builders import wait_off_window_cutoff

CLIENT_IP = "10.97.0.1"
SERVER_IP = "10.97.0.2"


def _sh(*cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, check=check, capture_output=True)


def capture_client_run(path: Path, prefix: str, client: str, *client_args: str, timeout: float = 60,
                       server_cwd: Path | None = None, duration_s: float = 20, client_ip: str = CLIENT_IP) -> Path:
    """Run the Python source ``client`` in the client namespace (address ``client_ip``, in SERVER_IP's
    /24) against ``http.server`` on port 80 of SERVER_IP, with tcpdump (full snap length) writing the
    server side to ``path``. The client's traffic (``duration_s`` at most) is kept 25 s off any 15-minute
    window boundary. Concurrent runs need different ``prefix``es (their last two characters name the
    veth devices)."""
    tag = f"{os.getpid() % 100000}"
    a, b = f"{prefix}A{tag}", f"{prefix}B{tag}"
    da, db = f"v{prefix[-2:]}a", f"v{prefix[-2:]}b"
    for ns in (a, b):
        _sh("ip", "netns", "del", ns, check=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        _sh("ip", "link", "add", da, "netns", a, "type", "veth", "peer", "name", db, "netns", b)
        _sh("ip", "-n", a, "addr", "add", f"{client_ip}/24", "dev", da)
        _sh("ip", "-n", b, "addr", "add", f"{SERVER_IP}/24", "dev", db)
        for ns, dev in ((a, da), (b, db)):
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        procs.append(subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-m", "http.server", "80",
                                       "--bind", SERVER_IP], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd=server_cwd))
        td = subprocess.Popen(["ip", "netns", "exec", b, "tcpdump", "-i", db, "-s", "0", "-U", "--immediate-mode",
                               "-w", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(td)
        time.sleep(1.5)
        wait_off_window_cutoff(duration_s)  # the traffic must not straddle a window cutoff
        subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", client, *client_args], check=True,
                       timeout=timeout)
        time.sleep(1.0)  # the last packets reach tcpdump's file (-U: written as they come)
        td.send_signal(signal.SIGINT)
        td.wait(10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        for ns in (a, b):
            _sh("ip", "netns", "del", ns, check=False)
    return path
