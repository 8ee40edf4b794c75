"""Kafka client security settings from the environment or a file, for every rstscope client.

One source for the edge producer (librdkafka), the workers (Faust/aiokafka) and plain consumers:

- ``KAFKA_BOOTSTRAP_SERVERS`` / ``bootstrap.servers``: host:port,...
- ``KAFKA_SECURITY_PROTOCOL`` / ``security.protocol``: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
- ``KAFKA_SASL_MECHANISM`` / ``sasl.mechanism``: SCRAM-SHA-256 (default), SCRAM-SHA-512 or PLAIN
- ``KAFKA_SASL_USERNAME`` / ``sasl.username``
- ``KAFKA_SASL_PASSWORD_FILE`` / ``sasl.password.file``: a file holding the password (preferred)
- ``KAFKA_SASL_PASSWORD`` / ``sasl.password``
- ``KAFKA_SSL_CA_FILE`` / ``ssl.ca.location``: PEM file of the CA(s) to trust

(environment variable / key in the config file, ``key=value`` lines, ``#`` comments).

The file is named by ``RSTSCOPE_KAFKA_CONFIG`` (or passed to :func:`load`); the environment wins over
it. The password is held in a :class:`Secret`, whose ``str``/``repr`` is ``'***'``: it reaches the
client libraries and nothing else (no log line, no exception message, no argv).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
CONFIG_ENV = "RSTSCOPE_KAFKA_CONFIG"

_ENV_KEYS = {
    "KAFKA_BOOTSTRAP_SERVERS": "bootstrap.servers",
    "KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "KAFKA_SASL_USERNAME": "sasl.username",
    "KAFKA_SASL_PASSWORD": "sasl.password",
    "KAFKA_SASL_PASSWORD_FILE": "sasl.password.file",
    "KAFKA_SSL_CA_FILE": "ssl.ca.location",
}


class SecurityConfigError(ValueError):
    """Bad or incomplete security settings (the message never holds a secret)."""


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ClientSecurity:
    bootstrap: str | None = None
    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = None

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, str]:
        """confluent-kafka settings (without ``bootstrap.servers``)."""
        conf: dict[str, str] = {}
        if self.protocol == "PLAINTEXT":
            return conf
        conf["security.protocol"] = self.protocol
        if self.uses_tls and self.ca_file:
            conf["ssl.ca.location"] = self.ca_file
        if self.uses_sasl:
            conf["sasl.mechanism"] = self.mechanism or "SCRAM-SHA-256"
            conf["sasl.username"] = self.username or ""
            conf["sasl.password"] = self.password.reveal() if self.password else ""
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.uses_tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else ssl.create_default_context()
        return ctx

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for a Faust app (aiokafka), or None for PLAINTEXT."""
        if self.protocol == "PLAINTEXT":
            return None
        import faust

        if self.uses_sasl:
            return faust.SASLCredentials(username=self.username, password=self.password.reveal() if self.password
                                         else None, ssl_context=self.ssl_context(),
                                         mechanism=self.mechanism or "SCRAM-SHA-256")
        return faust.SSLCredentials(self.ssl_context())

    def describe(self) -> str:
        """A log-safe one-liner."""
        parts = [f"protocol={self.protocol}"]
        if self.uses_sasl:
            parts += [f"mechanism={self.mechanism or 'SCRAM-SHA-256'}", f"user={self.username}", "password=***"]
        if self.uses_tls:
            parts.append(f"ca={self.ca_file or 'system'}")
        return " ".join(parts)

    def redact(self, text: str) -> str:
        """``text`` with the password (if any) replaced by ``***``."""
        if self.password and self.password.reveal():
            return text.replace(self.password.reveal(), "***")
        return text


def read_config_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SecurityConfigError(f"cannot read Kafka client config {path}: {e.strerror or e}") from None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        k, sep, v = s.partition("=")
        if not sep:
            raise SecurityConfigError(f"{path}:{n}: expected key=value")
        out[k.strip()] = v.strip()
    return out


def load(env: Mapping[str, str] | None = None, file: Path | None = None) -> ClientSecurity:
    """Security settings from ``file`` (or ``$RSTSCOPE_KAFKA_CONFIG``), overridden by the environment."""
    e = os.environ if env is None else env
    raw: dict[str, str] = {}
    path = file or (Path(e[CONFIG_ENV]) if e.get(CONFIG_ENV) else None)
    if path is not None:
        raw.update(read_config_file(path))
    for var, key in _ENV_KEYS.items():
        if e.get(var):
            raw[key] = e[var]
    unknown = sorted(set(raw) - set(_ENV_KEYS.values()))
    if unknown:
        raise SecurityConfigError(f"unknown Kafka client setting(s): {', '.join(unknown)}")
    protocol = raw.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise SecurityConfigError(f"security.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    mechanism = raw.get("sasl.mechanism")
    if mechanism is not None:
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise SecurityConfigError(f"sasl.mechanism {mechanism!r} is not one of {', '.join(MECHANISMS)}")
    password: Secret | None = None
    if raw.get("sasl.password.file"):
        pfile = Path(raw["sasl.password.file"])
        try:
            password = Secret(pfile.read_text().rstrip("\r\n"))
        except OSError as err:
            raise SecurityConfigError(f"cannot read the SASL password file {pfile}: {err.strerror or err}") \
                from None
    elif raw.get("sasl.password"):
        password = Secret(raw["sasl.password"])
    ca = raw.get("ssl.ca.location")
    if ca and not Path(ca).is_file():
        raise SecurityConfigError(f"CA file {ca} does not exist")
    sec = ClientSecurity(raw.get("bootstrap.servers"), protocol, mechanism, raw.get("sasl.username"), password, ca)
    if sec.uses_sasl and (not sec.username or password is None):
        raise SecurityConfigError(f"{protocol} needs a SASL username and a password (or password file)")
    return sec
