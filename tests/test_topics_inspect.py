"""`rstscope topics` when a broker does not know a topic another broker listed a moment ago.

On a loaded 3-node cluster a topic just created can be in one broker's metadata and unknown to the broker
asked for its configs: inspect() must call it missing (apply() then waits for it), not fail the command.
The broker's side is played by a stand-in admin client here; tests/faults runs the real one.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from rstscope.config import TopicSpec
from rstscope.streams import topics


class _Future:
    def __init__(self, value: Any = None, error: KafkaException | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _Entry:
    def __init__(self, value: str) -> None:
        self.value = value


class _Admin:
    """Lists both topics with one partition and one replica; knows the configs of ``known`` only."""

    def __init__(self, known: set[str], code: int = KafkaError.UNKNOWN_TOPIC_OR_PART) -> None:
        self.known, self.code = known, code

    def list_topics(self, timeout: float = 0) -> Any:
        part = type("P", (), {"replicas": [1], "leader": 1})()
        return type("MD", (), {"topics": {n: type("T", (), {"error": None, "partitions": {0: part}})()
                                          for n in ("a", "b")}})()

    def describe_configs(self, resources: list[Any], request_timeout: float = 0) -> dict[Any, _Future]:
        out = {}
        for r in resources:
            if r.name in self.known:
                out[r] = _Future({"cleanup.policy": _Entry("compact")})
            else:
                out[r] = _Future(error=KafkaException(KafkaError(self.code)))
        return out


SPECS = [TopicSpec("a", 1, 1, None, "compact"), TopicSpec("b", 1, 1, None, "compact")]


def test_a_topic_unknown_to_the_broker_asked_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "_admin", lambda bootstrap: _Admin({"a"}))
    assert [(p.topic, p.what) for p in topics.inspect("x", SPECS)] == [("b", "missing")]


def test_other_errors_still_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topics, "_admin", lambda bootstrap: _Admin({"a"}, KafkaError.TOPIC_AUTHORIZATION_FAILED))
    with pytest.raises(KafkaException):
        topics.inspect("x", SPECS)
