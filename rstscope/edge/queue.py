"""Back-pressure: librdkafka's local queue is the bound; what happens when it is full is explicit.

``queue.buffering.max.messages`` caps the messages waiting for the broker. When ``produce`` finds it
full, the sender serves delivery callbacks for at most ``max_wait_s`` and tries again; after that the
record is dropped and counted (reason ``queue_full``). A file replay waits forever (nothing is lost by
waiting); a live capture must not: while it waits the kernel buffer overflows and drops unseen.
The end-of-input watermark always waits (dropping it would stall the workers' event time); a live edge's
periodic watermark gives up like a record (Edge.watermark: the next one supersedes it).
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class ProducerLike(Protocol):
    def produce(self, topic: str, value: bytes, key: bytes | None = ..., **kw: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def __len__(self) -> int: ...


class BoundedSender:
    """Produce with a bounded wait; counts what it had to drop."""

    def __init__(self, producer: ProducerLike, topic: str, max_wait_s: float | None,
                 poll_s: float = 0.01) -> None:
        self.producer = producer
        self.topic = topic
        self.max_wait_s = max_wait_s
        self.poll_s = poll_s
        self.dropped = 0
        self.waits = 0

    def send(self, value: bytes, key: bytes | None, kw: dict[str, Any], block: bool = False) -> bool:
        """True when the record is in the queue; False when it was dropped (queue full too long; the
        caller counts it: the sender's own ``dropped`` counts every such give-up)."""
        deadline: float | None = None
        while True:
            try:
                self.producer.produce(self.topic, value, key, **kw)
                return True
            except BufferError:
                pass
            self.waits += 1
            now = time.monotonic()
            if not block and self.max_wait_s is not None:
                if deadline is None:
                    deadline = now + self.max_wait_s
                elif now >= deadline:
                    self.dropped += 1
                    return False
            self.producer.poll(self.poll_s)

    def depth(self) -> int:
        """Messages waiting in librdkafka's queue (not yet acknowledged by the broker)."""
        return len(self.producer)
