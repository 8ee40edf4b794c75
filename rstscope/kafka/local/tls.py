"""The SASL_SSL listener's secrets: a throw-away CA and broker keystore (``keytool``), SCRAM users.

Only clusters started with ``scram_users`` have them; :func:`secure_bootstrap` and :func:`ca_file` give
clients what they need to connect to that listener.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from rstscope.kafka.local.cluster import Cluster, default_dir
from rstscope.kafka.local.errors import LocalKafkaError, tail_text
from rstscope.kafka.local.jars import find_java


def _keytool() -> str:
    java = Path(find_java()).resolve()
    kt = java.parent / "keytool"
    if kt.exists():
        return str(kt)
    found = shutil.which("keytool")
    if found is None:
        raise LocalKafkaError("no 'keytool' (JDK) found: it makes the TLS keystore of the SASL_SSL listener")
    return found


def make_tls(tls: Path) -> None:
    """A throw-away CA and a broker key pair signed by it (SAN IP:127.0.0.1, DNS:localhost), PKCS12."""
    import secrets

    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    pw = secrets.token_hex(16)
    pw_file = tls / "store.password"
    pw_file.write_text(pw + "\n")
    os.chmod(pw_file, 0o600)
    kt = _keytool()
    san = "SAN=ip:127.0.0.1,dns:localhost"
    ca, broker = str(tls / "ca.p12"), str(tls / "broker.p12")
    common = ["-storetype", "PKCS12", "-storepass:file", str(pw_file)]
    steps = [
        ["-genkeypair", "-alias", "ca", "-dname", "CN=rstscope local-kafka CA", "-keyalg", "RSA", "-keysize", "2048",
         "-validity", "30", "-ext", "bc:c", "-keystore", ca, *common],
        ["-exportcert", "-rfc", "-alias", "ca", "-keystore", ca, "-file", str(tls / "ca.pem"), *common],
        ["-genkeypair", "-alias", "broker", "-dname", "CN=127.0.0.1", "-keyalg", "RSA", "-keysize", "2048",
         "-validity", "30", "-ext", san, "-keystore", broker, *common],
        ["-certreq", "-alias", "broker", "-keystore", broker, "-file", str(tls / "broker.csr"), *common],
        ["-gencert", "-alias", "ca", "-keystore", ca, "-infile", str(tls / "broker.csr"), "-outfile",
         str(tls / "broker.crt"), "-rfc", "-validity", "30", "-ext", san, "-ext", "EKU=serverAuth", *common],
        ["-importcert", "-noprompt", "-alias", "ca", "-file", str(tls / "ca.pem"), "-keystore", broker, *common],
        ["-importcert", "-noprompt", "-alias", "broker", "-file", str(tls / "broker.crt"), "-keystore", broker,
         *common],
    ]
    for args in steps:
        p = subprocess.run([kt, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if p.returncode != 0:
            raise LocalKafkaError(f"keytool {args[0]} failed (exit {p.returncode}):\n"
                                  f"{tail_text(p.stdout + p.stderr, 20)}")
    for f in tls.iterdir():
        os.chmod(f, 0o600 if f.suffix in (".p12", ".password") else 0o644)


def add_scram_users(bootstrap: str, users: dict[str, str], timeout: float = 30.0) -> None:
    """Create (or update) SCRAM-SHA-256 and -512 credentials through the admin API (PLAINTEXT listener)."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    mechs = (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)
    ups: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(name, ScramCredentialInfo(mech, 8192), pw.encode())
        for name, pw in users.items() for mech in mechs]
    deadline = time.monotonic() + timeout
    while True:
        try:
            for m in mechs:  # a user may be altered only once per request
                batch = [u for u in ups if u.scram_credential_info.mechanism == m]  # type: ignore[attr-defined]
                for f in admin.alter_user_scram_credentials(batch, request_timeout=10).values():
                    f.result()
            return
        except Exception as e:  # the message names users, never passwords
            if time.monotonic() > deadline:
                raise LocalKafkaError(f"could not create SCRAM users {sorted(users)}: {e}") from None
            time.sleep(0.5)


def secure_bootstrap(dir: Path | None = None) -> str:
    """Bootstrap servers of the SASL_SSL listeners ('' if the cluster has none)."""
    return Cluster.load(Path(dir if dir is not None else default_dir())).secure_bootstrap


def ca_file(dir: Path | None = None) -> Path:
    """The PEM CA certificate clients of the SASL_SSL listener trust."""
    return Cluster.load(Path(dir if dir is not None else default_dir())).tls_dir / "ca.pem"
