"""TLS + SASL/SCRAM: the edge producer, the workers (Faust broker_credentials with an SSL context), the
API's sink and a plain consumer talk to the SASL_SSL listener of a local Kafka 4.4 node; every one of
them takes the credentials from the environment and a password file (none on a command line); the
password appears in no log.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rstscope.api.store import Store
from rstscope.kafka import local
from rstscope.kafka.security import load

from . import synth
from .harness import READY, Proc, Run, check_synth_counts, rstscope
from .harness import env as harness_env

pytestmark = [pytest.mark.faults, pytest.mark.kafka]
USER = "rstscope-edge"


@dataclass
class SecureCluster:
    dir: Path
    plain: str
    secure: str
    password: str
    password_file: Path
    ca: Path


@pytest.fixture(scope="module")
def secure_cluster() -> Iterator[SecureCluster]:
    d = Path(tempfile.mkdtemp(prefix="rstscope-kafka-tls-"))
    password = "pw-" + secrets.token_hex(12)
    try:
        with local.running_cluster(1, d, die_with_parent=True, scram_users={USER: password}) as plain:
            pw_file = d / "client.password"
            pw_file.write_text(password + "\n")
            pw_file.chmod(0o600)
            yield SecureCluster(d, plain, local.secure_bootstrap(d), password, pw_file, local.ca_file(d))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _env(c: SecureCluster, password_file: Path | None = None) -> dict[str, str]:
    return {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD_FILE": str(password_file or c.password_file),
            "KAFKA_SSL_CA_FILE": str(c.ca), "KAFKA_BOOTSTRAP_SERVERS": c.secure}


def test_tls_scram_end_to_end_and_no_password_in_logs(secure_cluster: SecureCluster, work: Path,
                                                      figures: dict[str, Any]) -> None:
    c = secure_cluster
    env = _env(c)
    sec = load(env)
    assert c.password not in repr(sec) and c.password not in sec.describe()
    capture = synth.make(work / "tls.pcap", 300, seed=3)
    check_synth_counts(capture, 300, seed=3)
    run = Run(work, c.secure, replication=1, min_isr=1, security=sec.librdkafka(), proc_env=env)
    r = rstscope("topics", "apply", "--bootstrap", c.secure, "--topology", str(run.topo_path), "--app-id",
                 run.app_id, extra_env=env)
    assert r.returncode == 0, r.stderr
    outputs = [r.stdout + r.stderr]
    # the PLAINTEXT-only client is refused by the SASL_SSL listener; wrong password: refused, not leaked
    bad_pw = work / "bad.password"
    bad_pw.write_text("wrong-" + secrets.token_hex(8) + "\n")
    r_bad = rstscope("topics", "check", "--bootstrap", c.secure, "--topology", str(run.topo_path), "--app-id",
                     run.app_id, extra_env=_env(c, bad_pw), timeout=90)
    assert r_bad.returncode == 2, r_bad.stderr
    outputs.append(r_bad.stdout + r_bad.stderr)
    try:
        w = run.start_worker()
        run.wait_log(w, READY, 120)
        # the edge reads the same environment (no credentials on its command line)
        edge = run.edge(capture)
        rc, stats = run.edge_result(edge)
        assert rc == 0 and stats["delivery_failures"] == 0, run.logs()
        assert c.password not in " ".join(edge.popen.args), "the password is on the edge's command line"
        v = run.verdict(capture)  # a plain confluent consumer over SASL_SSL reads the rollups
        assert v["rows_equal"] and v["lost"] == 0 and v["double_counted"] == 0, (v, run.logs())
        # the sink reads the rollups over SASL_SSL into the API's store
        db = work / "sink.duckdb"
        sink_log = work / "sink.log"
        with open(sink_log, "wb") as out:
            sink = subprocess.Popen([sys.executable, "-m", "rstscope.cli", "sink", "--bootstrap", c.secure,
                                     "--db", str(db), "--topic", run.topic("rollups")],
                                    stdout=out, stderr=subprocess.STDOUT, env=harness_env(env))
        run.procs.append(Proc(sink, sink_log, "sink"))
        want = v["rows"]
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline and stored < want:
            time.sleep(1)
            if db.exists():
                try:
                    stored = Store(db, read_only=True).row_count()
                except Exception:  # the sink holds the file lock while it writes a batch
                    continue
        sink.terminate()
        sink.wait(30)
        assert stored == want, (stored, want, sink_log.read_text(errors="replace"))
    finally:
        run.stop_all()
    logs = {str(p.log): p.log.read_text(errors="replace") for p in run.procs}
    logs["topics"] = outputs[0]
    logs["topics (bad password)"] = outputs[1]
    logs["broker"] = (c.dir / "node-1" / "server.log").read_text(errors="replace")
    assert "SASL_SSL" in logs[str(w.log)] or "protocol=SASL_SSL" in logs[str(w.log)]
    for name, text in logs.items():
        assert c.password not in text, f"the password is in {name}"
        assert bad_pw.read_text().strip() not in text, f"the wrong password is in {name}"
    figures.update(produced=stats["delivered"], **v, protocol="SASL_SSL", mechanism="SCRAM-SHA-512",
                   logs_scanned=len(logs), log_bytes_scanned=sum(len(t) for t in logs.values()),
                   password_found=0)
