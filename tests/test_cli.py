"""`rstscope analyze` end to end on files: the JSON summary's keys, the records, errors users will hit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from builders import ISN, T0, ack, ether, ipv4_tcp, pcap_bytes, psh, rst, rstack, syn

from rstscope.cli import main
from rstscope.core.classify import SIGNATURES, STAGES, TAGS

RECORD_FIELDS = {"id", "window_start", "client_ip", "client_port", "server_ip", "server_port", "first_ts",
                 "last_ts", "packets", "stage", "tags", "signature", "ttl_delta", "ipid_delta", "country", "asn"}


def write_capture(path: Path) -> Path:
    """Three connections (reset Post-ACK, reset Post-PSH, timeout Post-SYN) and a frame 30 s later."""
    conns = [
        [syn(sport=1), ack(sport=1), rstack(sport=1)],
        [syn(sport=2), ack(sport=2), psh(sport=2), rst(7, sport=2), rst(7, sport=2)],
        [syn(sport=3)],
    ]
    frames = []
    t = T0
    for c in conns:
        for p in c:
            frames.append((t, ether(ipv4_tcp(p._replace(ts=t)))))
            t += 0.01
    end = ack(sport=9, seq=ISN + 1)
    frames.append((T0 + 30, ether(ipv4_tcp(end))))
    path.write_bytes(pcap_bytes(frames))
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["analyze", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_summary_keys_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cap = write_capture(tmp_path / "c.pcap")
    out = run_json(capsys, str(cap))
    assert set(out["stages"]) == set(STAGES)
    assert set(out["tags"]) == set(TAGS)
    assert set(out["signatures"]) == set(SIGNATURES)
    assert {"multi_syn", "incomplete", "no_syn", "non_tcp", "malformed"} <= set(out["excluded"])
    assert {"read", "tcp", "client_to_server", "sampled"} <= set(out["packets"])
    assert out["connections"] == 3
    assert out["stages"] == {"post_syn": 1, "post_ack": 1, "post_psh": 1, "later_in_flow": 0, "no_match": 0}
    assert out["signatures"]["SYN;ACK→RST+ACK"] == 1
    assert out["signatures"]["PSH+ACK→RST=RST"] == 1
    assert out["signatures"]["SYN→∅"] == 1
    assert out["excluded"]["no_syn"] == 1
    assert out["packets"]["read"] == 10


def test_records_and_rollups_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cap = write_capture(tmp_path / "c.pcap")
    conns, rolls = tmp_path / "c.jsonl", tmp_path / "r.jsonl"
    run_json(capsys, str(cap), "--out", str(conns), "--rollups", str(rolls))
    records = [json.loads(line) for line in conns.read_text().splitlines()]
    assert len(records) == 3
    assert all(set(r) >= RECORD_FIELDS for r in records)
    rows = [json.loads(line) for line in rolls.read_text().splitlines()]
    world = [r for r in rows if r["dimension"] == "world"]
    assert len(world) == 1 and world[0]["total"] == 3
    assert {r["dimension"] for r in rows} == {"world", "country", "asn", "country_asn"}
    # The same connection gets the same id on every run.
    run_json(capsys, str(cap), "--out", str(tmp_path / "again.jsonl"))
    again = [json.loads(line)["id"] for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert again == [r["id"] for r in records]


def test_server_port_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cap = write_capture(tmp_path / "c.pcap")
    assert run_json(capsys, str(cap), "--server-port", "443")["connections"] == 3
    out = run_json(capsys, str(cap), "--server-port", "80")
    assert out["connections"] == 0 and out["packets"]["other_traffic"] == 10


def test_timeout_flag_moves_the_cutoff_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The two resets ended: classified whatever the rule; the lone SYN, 30 s before the end, is
    incomplete when a timeout needs 40 s of quiet."""
    cap = write_capture(tmp_path / "c.pcap")
    out = run_json(capsys, str(cap), "--timeout", "40")
    assert out["connections"] == 2 and out["excluded"]["incomplete"] == 1 and out["mode"] == "window"


def test_idle_flag_selects_the_idle_mode_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cap = write_capture(tmp_path / "c.pcap")
    out = run_json(capsys, str(cap), "--idle", "3", "--out", str(tmp_path / "c.jsonl"))
    assert out["mode"] == "idle" and out["stages"]["post_syn"] == 1
    recs = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert {r["mode"] for r in recs} == {"idle"}


def test_bad_window_flags_are_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cap = write_capture(tmp_path / "c.pcap")
    assert main(["analyze", str(cap), "--idle", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_table_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cap = write_capture(tmp_path / "c.pcap")
    assert main(["analyze", str(cap)]) == 0
    text = capsys.readouterr().out
    assert "Post-SYN" in text and "Later" in text and "total" in text


def test_broken_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 64)
    assert main(["analyze", str(bad)]) == 2
    assert "bad.pcap: byte 0: unknown magic" in capsys.readouterr().err


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["analyze", str(tmp_path / "nope.pcap")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "rstscope.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("rstscope ")
