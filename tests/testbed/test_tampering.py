"""Proof on real tampering (issue 6): rstscope's verdicts against what a real middlebox did.

The bed (tests/testbed/bed.py, docs/signatures.md) runs once per session: 38 scenarios x (3 tampered
+ 1 control) connections through an NFQUEUE middlebox that drops and injects RSTs toward the server
in every style of the paper and as the named middleboxes of issue 16 (the GFW's type-1 and type-2
injectors), captured on the server's interface and with `tcpdump -i any`.
Every label must match rstscope's record (stage, tags, signature, injected); precision and recall
must be 1.0 for every one of the 19 signatures, every stage, every tag and the injection verdict.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

pytestmark = pytest.mark.realnet

CAPTURES = ("bed.pcap", "bed_any.pcap")
# the 19 signatures of Sundara Raman et al. (SIGCOMM 2023), spelled as SPEC.md section 5
PAPER_19 = {
    "SYN→∅", "SYN→RST", "SYN→RST+ACK", "SYN→RST;RST+ACK",
    "SYN;ACK→∅", "SYN;ACK→RST", "SYN;ACK→RST;RST", "SYN;ACK→RST+ACK", "SYN;ACK→RST+ACK;RST+ACK",
    "PSH+ACK→∅", "PSH+ACK→RST", "PSH+ACK→RST+ACK", "PSH+ACK→RST;RST+ACK", "PSH+ACK→RST+ACK;RST+ACK",
    "PSH+ACK→RST=RST", "PSH+ACK→RST≠RST", "PSH+ACK→RST;RST0",
    "PSH+ACK;Data→RST", "PSH+ACK;Data→RST+ACK",
}
# issue 16's named middleboxes (docs/signatures.md cites each)
NAMED = {"gfw_type1", "gfw_type2"}


def test_the_bed_labels_every_signature_of_the_paper(bed_report: dict) -> None:
    labelled = {k for k in bed_report["labelled_signatures"] if k != "None"}
    assert labelled == PAPER_19, "the bed must produce each of the 19 signatures"
    assert all(n >= 3 for k, n in bed_report["labelled_signatures"].items()), bed_report["labelled_signatures"]


@pytest.mark.parametrize("capture", CAPTURES)
def test_every_label_matches_its_record(bed_report: dict, capture: str) -> None:
    res = bed_report["results"][capture]
    assert res["mismatches"] == [], json.dumps(res["mismatches"], indent=1, ensure_ascii=False)
    assert res["matched"] == res["labels"] == bed_report["labels"]
    assert res["unlabelled_records"] == 0


def test_the_bed_labels_every_named_middlebox(bed_report: dict) -> None:
    n = bed_report["labelled_tags"]
    assert all(n.get(t, 0) >= 3 for t in NAMED), n


@pytest.mark.parametrize("capture", CAPTURES)
@pytest.mark.parametrize("dimension", ["per_signature", "per_stage", "per_injected", "per_tag"])
def test_precision_and_recall_are_one(bed_report: dict, capture: str, dimension: str) -> None:
    table = bed_report["results"][capture][dimension]
    bad = {k: v for k, v in table.items() if v["precision"] != 1.0 or v["recall"] != 1.0}
    assert not bad, bad
    if dimension == "per_signature":
        assert set(table) >= PAPER_19
    if dimension == "per_stage":
        assert {"post_syn", "post_ack", "post_psh", "later_in_flow", "no_match"} <= set(table)
    if dimension == "per_tag":
        assert set(table) >= NAMED


def test_injection_evidence_is_exactly_where_ttl_or_ipid_differ(bed_report: dict) -> None:
    out = Path(bed_report["out"])
    labels = {(x["client_ip"], x["client_port"], x["server_ip"], x["server_port"]): x
              for x in map(json.loads, (out / "labels.jsonl").read_text().splitlines())}
    recs = [json.loads(x) for x in (out / "bed.connections.jsonl").read_text().splitlines()]
    seen = {"ttl": 0, "ipid": 0, "mimic": 0, "v6_ipid": 0}
    for r in recs:
        lab = labels[(r["client_ip"], r["client_port"], r["server_ip"], r["server_port"])]
        ev = (lab["style"] or {}).get("evidence") if lab["tampered"] and "RST" in str(lab["signature"]) else None
        if ev == "ttl":
            assert r["ttl_delta"] >= 2 and r["ipid_delta"] <= 1 and r["injected"], r
            seen["ttl"] += 1
        elif ev == "ipid" and r["ip_version"] == 4:
            assert r["ttl_delta"] <= 1 and r["ipid_delta"] >= 2 and r["injected"], r
            seen["ipid"] += 1
        elif ev == "ipid":  # IPv6 has no IP ID: a same-hop-limit injection is invisible
            assert r["ttl_delta"] <= 1 and not r["injected"], r
            seen["v6_ipid"] += 1
        elif ev == "mimic":
            assert r["ttl_delta"] <= 1 and (r["ipid_delta"] or 0) <= 1 and not r["injected"], r
            seen["mimic"] += 1
        elif ev in ("unlike", "gfw"):
            assert r["ttl_delta"] >= 2 and r["injected"], r
            if r["ip_version"] == 4:
                assert r["ipid_delta"] >= 2
    assert all(seen.values()), seen


def test_cooked_capture_is_linux_sll2(bed_report: dict) -> None:
    head = (Path(bed_report["out"]) / "bed_any.pcap").read_bytes()[:24]
    magic = struct.unpack("<I", head[:4])[0]
    bo = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    assert struct.unpack(bo + "I", head[20:24])[0] & 0xFFFF == 276


def test_the_bed_fits_in_ci_time(bed_report: dict) -> None:
    assert bed_report["runtime_s"] - bed_report.get("window_wait_s", 0) < 240
