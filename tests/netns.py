"""Two network namespaces joined by a veth, an HTTP server in one, tcpdump on its side: the real-traffic
capture several test modules make (each with its own client code and namespace tag)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

CLIENT_IP = "10.97.0.1"


class Pair(NamedTuple):
    client: str  # namespace names
    server: str


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, check=check, capture_output=True)


def capture_http(path: Path, prefix: str, client_code: str, client_args: Sequence[str] = (),
                 server_ip: str = "10.97.0.2", tcpdump_args: Sequence[str] = (), server_cwd: Path | None = None,
                 before_stop: Callable[[Pair], None] | None = None, client_timeout: float = 60) -> Path:
    """Run ``client_code`` (python -c) in a client namespace against ``python -m http.server`` on port 80 of
    a server namespace, capturing the server's veth to ``path``; ``before_stop`` runs while tcpdump still
    captures. Namespaces and processes are removed whatever happens."""
    tag = f"{os.getpid() % 100000}"
    pair = Pair(f"{prefix}A{tag}", f"{prefix}B{tag}")
    dev_c, dev_s = f"{prefix[:4]}c", f"{prefix[:4]}s"
    for ns in pair:
        sh("ip", "netns", "del", ns, check=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for ns in pair:
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", dev_c, "netns", pair.client, "type", "veth", "peer", "name", dev_s, "netns",
           pair.server)
        sh("ip", "-n", pair.client, "addr", "add", f"{CLIENT_IP}/24", "dev", dev_c)
        sh("ip", "-n", pair.server, "addr", "add", f"{server_ip}/24", "dev", dev_s)
        for ns, dev in ((pair.client, dev_c), (pair.server, dev_s)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        procs.append(subprocess.Popen(["ip", "netns", "exec", pair.server, sys.executable, "-m", "http.server", "80",
                                       "--bind", server_ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      cwd=server_cwd))
        td = subprocess.Popen(["ip", "netns", "exec", pair.server, "tcpdump", "-i", dev_s, *tcpdump_args, "-U",
                               "-w", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(td)
        time.sleep(1.5)
        subprocess.run(["ip", "netns", "exec", pair.client, sys.executable, "-c", client_code, *client_args],
                       check=True, timeout=client_timeout)
        if before_stop is not None:
            before_stop(pair)
        time.sleep(0.3)
        td.send_signal(signal.SIGINT)
        td.wait(10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        for ns in pair:
            sh("ip", "netns", "del", ns, check=False)
    return path
