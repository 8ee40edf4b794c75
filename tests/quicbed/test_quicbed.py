"""The QUIC bed (issue 17) does what its labels say: checked on the capture with tshark, an independent
reading (Wireshark's QUIC dissector parses every long header and decrypts client AND server Initial
packets on its own, RFC 9001: SNI, CRYPTO and CONNECTION_CLOSE frames; it cannot read Handshake or
1-RTT packets, and it sees a header form and a packet type for each packet of a datagram).

Two sources, the same checks:
 * ``live`` (marker realnet): builds the bed once per module (tests/quicbed/bed.py: namespaces, the
   aioquic server and clients, the NFQUEUE middlebox, tcpdump) into a temp dir; skips when not root
   or a tool / package is missing. RSTSCOPE_QUICBED_OUT keeps its files there.
 * ``fixture``: the saved capture tests/fixtures/quic_bed.pcap and its labels
   tests/quicbed/quic_bed.labels.jsonl (skips without tshark).

These checks are about the bed; rstscope's QUIC classification is not involved.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# the saved capture's labels live beside this file: tests/test_fastpath.py reads every file of
# tests/fixtures/ as a capture
FIXTURE_LABELS = Path(__file__).resolve().with_name("quic_bed.labels.jsonl")
RESERVED_VERSION = 0x1A2A3A4A
CONNECTION_CLOSE_TRANSPORT = 0x1C
FIELDS = ("frame.number", "frame.time_epoch", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "udp.srcport",
          "udp.dstport", "quic.header_form", "quic.long.packet_type", "quic.version", "quic.frame_type",
          "tls.handshake.extensions_server_name", "quic.dcid")


# ----------------------------------------------------------------------------------------
# the two sources
# ----------------------------------------------------------------------------------------

def _live(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.skip("the QUIC bed needs root (network namespaces, iptables NFQUEUE)")
    try:
        from tests.quicbed import bed
    except ImportError as e:  # aioquic / NetfilterQueue missing
        pytest.skip(f"the QUIC bed needs: {e}")
    missing = bed.missing_tools() + ([] if shutil.which("tshark") else ["tshark"])
    if missing:
        pytest.skip("the QUIC bed needs: " + ", ".join(missing))
    out = Path(os.environ.get("RSTSCOPE_QUICBED_OUT") or tmp_path_factory.mktemp("quicbed"))
    rep = bed.run(out)
    return out / "quicbed.pcap", out / "labels.jsonl", rep


@pytest.fixture(scope="module", params=[pytest.param("live", marks=pytest.mark.realnet), "fixture"])
def bed_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not shutil.which("tshark"):
        pytest.skip("tshark is needed to read the capture independently")
    if request.param == "live":
        pcap, labels_path, rep = _live(tmp_path_factory)
    else:
        pcap, labels_path, rep = FIXTURES / "quic_bed.pcap", FIXTURE_LABELS, {}
        if not pcap.exists():
            pytest.skip("no saved QUIC bed fixture")
    labels = [json.loads(x) for x in labels_path.read_text().splitlines() if x.strip()]
    return {"source": request.param, "report": rep, "labels": labels, "flows": read_flows(pcap)}


# ----------------------------------------------------------------------------------------
# the capture, as tshark reads it: per flow, the datagrams of each side and their QUIC packets
# ----------------------------------------------------------------------------------------

def _split(v: str) -> list[str]:
    return [x for x in v.split(",") if x != ""] if v else []


def read_flows(pcap: Path) -> dict[tuple[str, int, str, int], dict[str, Any]]:
    cmd = ["tshark", "-r", str(pcap), "-n", "-Y", "udp", "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    flows: dict[tuple[str, int, str, int], dict[str, Any]] = defaultdict(lambda: {"client": [], "server": []})
    for line in out.splitlines():
        v = dict(zip(FIELDS, line.split("\t"), strict=False))
        src, dst = v["ip.src"] or v["ipv6.src"], v["ip.dst"] or v["ipv6.dst"]
        sport, dport = int(v["udp.srcport"]), int(v["udp.dstport"])
        forms = _split(v["quic.header_form"])
        ltypes = _split(v["quic.long.packet_type"])
        versions = [int(x, 16) for x in _split(v["quic.version"])]
        pkts: list[dict[str, Any]] = []
        li = ti = 0
        for form in forms:
            if form == "1":
                ver = versions[li] if li < len(versions) else None
                li += 1
                if ver == 0:
                    pkts.append({"type": "vn", "version": 0})
                    continue
                t = int(ltypes[ti]) if ti < len(ltypes) else -1
                ti += 1
                pkts.append({"type": {0: "initial", 1: "0rtt", 2: "handshake", 3: "retry"}.get(t, "?"),
                             "version": ver})
            else:
                pkts.append({"type": "short"})
        dg = {"t": float(v["frame.time_epoch"]), "packets": pkts,
              "frames": [int(x, 0) for x in _split(v["quic.frame_type"])],
              "sni": v["tls.handshake.extensions_server_name"] or None, "dcid": _split(v["quic.dcid"])}
        if dport == 443:
            flows[(src, sport, dst, dport)]["client"].append(dg)
        else:
            flows[(dst, dport, src, sport)]["server"].append(dg)
    return dict(flows)


def types(dgs: list[dict[str, Any]]) -> list[str]:
    return [p["type"] for d in dgs for p in d["packets"]]


def key(x: dict[str, Any]) -> tuple[str, int, str, int]:
    return (x["client_ip"], int(x["client_port"]), x["server_ip"], int(x["server_port"]))


def flows_of(run: dict[str, Any], scenario: str, treated: bool = True) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    got = [(x, run["flows"].get(key(x), {"client": [], "server": []})) for x in run["labels"]
           if x["scenario"] == scenario and x["treated"] == treated]
    assert got, f"no labelled {'treated' if treated else 'control'} connection of {scenario}"
    return got


def assert_completed(x: dict[str, Any], f: dict[str, Any]) -> None:
    ct, st = types(f["client"]), types(f["server"])
    assert x["completed"] and x["done"] in ("one_rtt_flight", "several_flights"), x
    assert {"initial", "handshake", "short"} <= set(ct), (x, ct)
    assert {"initial", "handshake", "short"} <= set(st), (x, st)
    assert f["client"][0]["packets"][0]["type"] == "initial" and f["client"][0]["sni"] == x["sni"], f["client"][0]


# ----------------------------------------------------------------------------------------
# the checks
# ----------------------------------------------------------------------------------------

def test_every_udp_flow_is_labelled_and_every_label_is_in_the_capture(bed_run: dict[str, Any]) -> None:
    labelled = {key(x) for x in bed_run["labels"]}
    assert len(labelled) == len(bed_run["labels"]), "one label per 4-tuple"
    assert set(bed_run["flows"]) - labelled == set(), "UDP flows the bed did not label"
    missing = [k for k in labelled if not bed_run["flows"].get(k, {}).get("client")]
    assert missing == [], "labelled connections with no client packet at the server"


def test_no_connection_the_bed_meant_to_complete_failed(bed_run: dict[str, Any]) -> None:
    assert [x for x in bed_run["labels"] if x["done"] == "failed"] == []
    scen = {x["scenario"] for x in bed_run["labels"]}
    assert {"completed", "sni_drop", "udp_drop_after_first", "drop_after_handshake", "client_abort_initial",
            "version_negotiation", "v6_completed", "v6_sni_drop", "ordinary_tail"} <= scen


def test_controls_and_ordinary_traffic_complete(bed_run: dict[str, Any]) -> None:
    for x in bed_run["labels"]:
        if not x["treated"]:
            assert_completed(x, bed_run["flows"][key(x)])


@pytest.mark.parametrize("scenario", ["completed", "v6_completed"])
def test_completed(bed_run: dict[str, Any], scenario: str) -> None:
    for x, f in flows_of(bed_run, scenario):
        assert_completed(x, f)
        assert x["done"] == "several_flights" and x["client"]["responses_ok"] == 3
        # after the client's Finished datagram, at least one more client datagram per request
        assert sum(1 for d in f["client"] if d["packets"][0]["type"] == "short") >= 3, types(f["client"])


def test_the_first_client_initial_carries_the_labelled_sni_and_dcid(bed_run: dict[str, Any]) -> None:
    """Wireshark's own Initial decryption agrees with the label (and with the middlebox's, which used
    aioquic's crypto) on every connection whose first Initial is of version 1."""
    for x in bed_run["labels"]:
        first = bed_run["flows"][key(x)]["client"][0]
        if x["first_version"] != 1:
            continue
        assert first["sni"] == x["sni"], (x, first)
        assert first["dcid"][0].replace(":", "") == x["odcid"], (x, first)
        if x.get("middlebox"):
            assert x["middlebox"]["sni"] == x["sni"] and x["middlebox"]["odcid"] == x["odcid"], x


@pytest.mark.parametrize("scenario", ["sni_drop", "v6_sni_drop", "udp_drop_after_first"])
def test_dropped_after_the_first_initial(bed_run: dict[str, Any], scenario: str) -> None:
    """Exactly one client datagram reached the server: one Initial with the ClientHello; the server
    answered it (its Initial / Handshake flight and their retransmissions) and never got further."""
    for x, f in flows_of(bed_run, scenario):
        assert x["done"] == "initials_only" and not x["completed"], x
        assert len(f["client"]) == 1 and types(f["client"]) == ["initial"], types(f["client"])
        assert 6 in f["client"][0]["frames"]  # CRYPTO
        st = types(f["server"])
        assert st and set(st) <= {"initial", "handshake"}, st
        assert all(d["t"] >= f["client"][0]["t"] for d in f["server"])
        assert x["middlebox"]["client_forwarded"] == {"initial": 1} and x["middlebox"]["client_dropped"] >= 1, x
        if scenario == "udp_drop_after_first":
            assert x["server_ip"].endswith(("10.78.2.3", "fd78:2::3")) and x["sni"] == "allowed.example"
        else:
            assert x["sni"] == "blocked.example"


def test_sni_drop_return_shows_repeated_initials(bed_run: dict[str, Any]) -> None:
    """Only the server's packets are dropped: the server sees the client's Initial retransmissions."""
    for x, f in flows_of(bed_run, "sni_drop_return"):
        assert x["done"] == "initials_only" and x["initials_repeated_to_server"], x
        assert len(f["client"]) >= 2 and set(types(f["client"])) == {"initial"}, types(f["client"])
        assert set(types(f["server"])) <= {"initial", "handshake"}


def test_drop_after_handshake(bed_run: dict[str, Any]) -> None:
    """The handshake reached the server (client Initial and Handshake packets; the server went on to
    1-RTT), not one client 1-RTT packet (the coalesced one was blanked by the middlebox)."""
    for x, f in flows_of(bed_run, "drop_after_handshake"):
        ct = types(f["client"])
        assert x["done"] == "handshake_no_1rtt" and x["client"]["handshake_completed"] and not x["completed"], x
        assert "handshake" in ct and "short" not in ct, ct
        assert "short" in types(f["server"])
        assert x["middlebox"]["client_stripped"] >= 1


def test_drop_after_handshake_coalesced(bed_run: dict[str, Any]) -> None:
    """As above, but the 1-RTT packet aioquic coalesces behind its Finished reached the server: one
    client 1-RTT packet, in the same datagram as a Handshake packet, and nothing after."""
    for x, f in flows_of(bed_run, "drop_after_handshake_coalesced"):
        ct = types(f["client"])
        assert x["done"] == "one_rtt_flight" and not x["completed"], x
        assert ct.count("short") == 1, ct
        (dg,) = [d for d in f["client"] if any(p["type"] == "short" for p in d["packets"])]
        assert [p["type"] for p in dg["packets"]][-2:] == ["handshake", "short"]
        assert dg is f["client"][-1]


def test_client_abort_during_the_handshake(bed_run: dict[str, Any]) -> None:
    """aioquic's close() right after its first Initial: a second client Initial with CONNECTION_CLOSE
    (transport, 0x1c), nothing else from the client."""
    for x, f in flows_of(bed_run, "client_abort_initial"):
        if x["client"]["close_epoch"] == "handshake":  # the server's flight was in first (a slow run)
            assert x["done"] == "client_close_handshake" and "handshake" in types(f["client"]), x
            continue
        assert x["done"] == "client_close_initial", x
        assert set(types(f["client"])) == {"initial"} and len(f["client"]) == 2, types(f["client"])
        assert 6 in f["client"][0]["frames"]
        assert CONNECTION_CLOSE_TRANSPORT in f["client"][-1]["frames"], f["client"][-1]


def test_version_negotiation_restart(bed_run: dict[str, Any]) -> None:
    """The client starts with a reserved version; the server's first answer is Version Negotiation;
    the client restarts with QUIC v1 and completes."""
    for x, f in flows_of(bed_run, "version_negotiation"):
        assert x["done"] == "vn_restart" and x["completed"] and x["first_version"] == RESERVED_VERSION, x
        first = f["client"][0]["packets"][0]
        assert first["type"] == "initial" and first["version"] == RESERVED_VERSION
        assert f["server"][0]["packets"][0]["type"] == "vn"
        assert f["client"][1]["packets"][0] == {"type": "initial", "version": 1}
        assert {"handshake", "short"} <= set(types(f["client"]))


def test_the_capture_stays_small_and_quick(bed_run: dict[str, Any]) -> None:
    n = sum(len(f["client"]) + len(f["server"]) for f in bed_run["flows"].values())
    assert n < 1500, n
    ts = [d["t"] for f in bed_run["flows"].values() for side in ("client", "server") for d in f[side]]
    assert max(ts) - min(ts) < 60
    rep = bed_run["report"]
    if rep:
        assert rep["runtime_s"] - rep.get("window_wait_s", 0) < 60, rep


def test_blocked_flows_go_quiet_for_ten_seconds_before_the_capture_ends(bed_run: dict[str, Any]) -> None:
    """The ordinary traffic after the scenarios keeps the capture going >= 10 s past every flow the
    middlebox blocked, so a stage decoder sees a timeout there, not an unfinished flow."""
    end = max(d["t"] for f in bed_run["flows"].values() for side in ("client", "server") for d in f[side])
    blocked = [x for x in bed_run["labels"] if x.get("middlebox") and x["middlebox"]["triggered"]]
    assert blocked
    for x in blocked:
        last = bed_run["flows"][key(x)]["client"][-1]["t"]
        assert end - last >= 10, (x["scenario"], end - last)
