"""The broker's jars and the JVM that runs them: Maven resolves the jars into a cache once, then reuse.

Only a JDK 17+ (``java``) and Maven (``mvn``) are needed on the machine; the pom is packaged in
``rstscope/kafka/data/pom.xml``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

from rstscope.kafka.local.errors import LocalKafkaError, log, tail_text

KAFKA_VERSION = "4.4.0"
"""Kafka version the pom resolves by default (newest 4.x on Maven Central here; see the package docs)."""

def cache_root() -> Path:
    """Where resolved jars live, per version: shared by every cluster and test session."""
    env = os.environ.get("RSTSCOPE_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rstscope" / "kafka"


def data_file(name: str) -> Path:
    """A file packaged in ``rstscope/kafka/data`` (pom.xml, log4j2.properties)."""
    return Path(str(resources.files("rstscope.kafka").joinpath("data", name)))


def ensure_libs(version: str = KAFKA_VERSION, *, quiet: bool = False) -> Path:
    """Return the directory holding the broker's jars, resolving them with Maven the first time.

    Safe against concurrent callers (a file lock guards the download); a complete download is marked by
    ``libs/.complete`` and reused afterwards.
    """
    vdir = cache_root() / version
    libs = vdir / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    vdir.mkdir(parents=True, exist_ok=True)
    with open(vdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise LocalKafkaError("Maven ('mvn') is not on PATH; it is needed once to fetch the Kafka jars")
        work = Path(tempfile.mkdtemp(prefix="mvn-", dir=vdir))
        try:
            shutil.copy(data_file("pom.xml"), work / "pom.xml")
            out = work / "libs"
            cmd = [mvn, "-q", "-B", "-f", str(work / "pom.xml"), f"-Dkafka.version={version}",
                   "dependency:copy-dependencies", f"-DoutputDirectory={out}", "-DincludeScope=runtime"]
            if not quiet:
                log(f"resolving Apache Kafka {version} jars with Maven into {libs} (once) ...")
            t0 = time.monotonic()
            proc = subprocess.run(cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if proc.returncode != 0 or not any(out.glob("kafka_2.13-*.jar")):
                raise LocalKafkaError(
                    f"mvn failed (exit {proc.returncode}) resolving kafka_2.13:{version}:\n"
                    + tail_text(proc.stdout + proc.stderr, 40))
            if libs.exists():
                shutil.rmtree(libs)
            out.rename(libs)
            marker.write_text(f"{version}\n")
            if not quiet:
                n = len(list(libs.glob("*.jar")))
                log(f"resolved {n} jars in {time.monotonic() - t0:.1f}s")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return libs


def find_java() -> str:
    """The JVM to run: ``$JAVA_HOME/bin/java`` if set (the JDK the user chose), else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("no 'java' on PATH (and no JAVA_HOME): Kafka 4.x needs a JDK/JRE 17+")
    return java
