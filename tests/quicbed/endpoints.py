"""The QUIC bed's real endpoints (aioquic), run inside the bed's namespaces by tests/quicbed/bed.py.

    ip netns exec qb-srv python -m tests.quicbed.endpoints server CONFIG_JSON
    ip netns exec qb-cli python -m tests.quicbed.endpoints client SPEC_JSON

* ``server``: aioquic's asyncio ``serve`` on UDP 443 of every address in the config (the allowed and
  the blocked server address, IPv4 and IPv6), ALPN ``rstscope-echo``: a minimal echo protocol (each
  client-opened bidirectional stream is read to its end and sent back, then ended). The certificate
  and key are files the bed made at run time. Prints ``ready`` once every address is bound.
* ``client``: the connections of one scenario, one after the other, each from its OWN UDP socket
  bound to the scenario's client address (so the capture joins the labels by address and port).
  Before a connection sends anything it prints one JSON line with its 4-tuple and original DCID; after
  it ends, a second JSON line with what the client did and saw. Uses only aioquic and the standard
  library (never rstscope).

Client connection spec (JSON): {"i": 0, "dst": "10.78.2.2", "sni": "blocked.example",
"mode": "echo" | "abort_initial", "requests": 1, "versions": [1] (supported_versions, the first is
the one the client starts with), "idle_timeout": 2.5}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import sys
import time
from typing import Any, cast

from aioquic import tls
from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

ALPN = "rstscope-echo"
PORT = 443


# ----------------------------------------------------------------------------------------
# server
# ----------------------------------------------------------------------------------------

async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()
    writer.write(data)
    writer.write_eof()


_TASKS: set[asyncio.Task[None]] = set()


def _on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    task = asyncio.ensure_future(_echo(reader, writer))
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def run_server(cfg: dict[str, Any]) -> None:
    conf = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], idle_timeout=float(cfg["idle_timeout"]))
    conf.load_cert_chain(cfg["cert"], cfg["key"])
    servers = [await serve(a, PORT, configuration=conf, stream_handler=_on_stream) for a in cfg["addresses"]]
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()  # until SIGTERM
    finally:
        for s in servers:
            s.close()


# ----------------------------------------------------------------------------------------
# client
# ----------------------------------------------------------------------------------------

async def _request(proto: QuicConnectionProtocol, payload: bytes, timeout: float) -> bool:
    reader, writer = await proto.create_stream()
    writer.write(payload)
    writer.write_eof()
    try:
        got = await asyncio.wait_for(reader.read(), timeout)
    except (TimeoutError, ConnectionError):
        return False
    return got == payload


async def one_connection(src: str, c: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    conf = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name=c["sni"],
                             verify_mode=ssl.CERT_NONE, idle_timeout=float(c["idle_timeout"]))
    if c.get("versions"):
        conf.supported_versions = [int(v) for v in c["versions"]]
    conn = QuicConnection(configuration=conf)
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    sock.bind((src, 0))
    cport = sock.getsockname()[1]
    print(json.dumps({"i": c["i"], "event": "start", "client_ip": src, "client_port": cport,
                      "server_ip": c["dst"], "server_port": PORT,
                      "odcid": conn.original_destination_connection_id.hex(),
                      "first_version": conf.supported_versions[0]}), flush=True)
    transport, proto_ = await loop.create_datagram_endpoint(lambda: QuicConnectionProtocol(conn), sock=sock)
    proto = cast(QuicConnectionProtocol, proto_)
    res: dict[str, Any] = {"i": c["i"], "event": "end", "handshake_completed": False, "requests_sent": 0,
                           "responses_ok": 0, "client_closed": False, "close_epoch": None}
    t0 = time.monotonic()
    limit = float(c["idle_timeout"]) + 1.5
    try:
        # aioquic compares the peer's address as the socket reports it: a 4-tuple for IPv6
        proto.connect((c["dst"], PORT, 0, 0) if fam == socket.AF_INET6 else (c["dst"], PORT))
        if c["mode"] == "abort_initial":
            # give up during the handshake: the client has sent its first Initial and holds only Initial
            # keys, so aioquic's close() writes CONNECTION_CLOSE (0x1c) into an Initial packet
            await asyncio.sleep(0)
            # what aioquic writes the close into: every epoch whose send keys it holds (Initial only,
            # unless the server's first flight was already processed)
            hs = conn._cryptos[tls.Epoch.HANDSHAKE].send.is_valid()
            proto.close()
            res["client_closed"], res["close_epoch"] = True, "handshake" if hs else "initial"
        else:
            try:
                await asyncio.wait_for(proto.wait_connected(), limit)
                res["handshake_completed"] = True
            except (TimeoutError, ConnectionError):
                res["handshake_completed"] = False
            if res["handshake_completed"]:
                for k in range(int(c.get("requests", 1))):
                    res["requests_sent"] += 1
                    if not await _request(proto, f"rstscope quic bed {c['i']}.{k}\n".encode(), limit):
                        break
                    res["responses_ok"] += 1
                    await asyncio.sleep(0.05)
                if res["responses_ok"] == res["requests_sent"]:
                    proto.close()  # CONNECTION_CLOSE in a 1-RTT packet
                    res["client_closed"], res["close_epoch"] = True, "1rtt"
        with_timeout = max(0.5, limit - (time.monotonic() - t0))
        proto.close()  # a no-op once the connection ended (idle timeout) or was closed above
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proto.wait_closed(), with_timeout)
    finally:
        transport.close()
    res["negotiated_version"] = conn._version  # after a Version Negotiation restart: the common version
    res["seconds"] = round(time.monotonic() - t0, 3)
    return res


async def run_client(spec: dict[str, Any]) -> None:
    for c in spec["conns"]:
        res = await one_connection(spec["src"], c)
        print(json.dumps(res), flush=True)
        await asyncio.sleep(float(spec.get("pause", 0.1)))


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("server", "client"):
        print(__doc__, file=sys.stderr)
        return 2
    arg = json.loads(argv[2])
    if argv[1] == "server":
        asyncio.run(run_server(arg))
    else:
        asyncio.run(run_client(arg))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
