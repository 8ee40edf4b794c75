"""rstscope.kafka.security: settings from the environment or a file; the password never prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from rstscope.kafka.security import SecurityConfigError, load

pytestmark = pytest.mark.faults
PW = "s3cret-Pa55-word"


def test_env_file_precedence_and_redaction(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    pw = tmp_path / "pw"
    pw.write_text(PW + "\n")
    conf = tmp_path / "kafka.conf"
    conf.write_text(f"# client\nbootstrap.servers=h1:9093\nsecurity.protocol=SASL_SSL\nsasl.username=file-user\n"
                    f"sasl.password.file={pw}\nssl.ca.location={ca}\n")
    sec = load({"RSTSCOPE_KAFKA_CONFIG": str(conf), "KAFKA_SASL_USERNAME": "env-user"})
    assert sec.bootstrap == "h1:9093" and sec.username == "env-user" and sec.protocol == "SASL_SSL"
    rd = sec.librdkafka()
    assert rd["sasl.password"] == PW and rd["sasl.mechanism"] == "SCRAM-SHA-256" and rd["ssl.ca.location"] == str(ca)
    for text in (repr(sec), str(sec), sec.describe(), str(sec.password), repr(sec.password)):
        assert PW not in text
    assert sec.redact(f"auth failed for {PW}") == "auth failed for ***"
    assert load({}).librdkafka() == {}


@pytest.mark.parametrize("env", [
    {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"},  # no password
    {"KAFKA_SECURITY_PROTOCOL": "TLS"},
    {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "u",
     "KAFKA_SASL_PASSWORD": PW},
    {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
])
def test_bad_settings_are_refused_without_the_secret(env: dict[str, str]) -> None:
    with pytest.raises(SecurityConfigError) as e:
        load(env)
    assert PW not in str(e.value)


def test_unknown_keys_in_file(tmp_path: Path) -> None:
    conf = tmp_path / "kafka.conf"
    conf.write_text(f"sasl.passwrd={PW}\n")
    with pytest.raises(SecurityConfigError) as e:
        load({"RSTSCOPE_KAFKA_CONFIG": str(conf)})
    assert PW not in str(e.value) and "sasl.passwrd" in str(e.value)
