"""The streaming commit protocol, one object for both agents (after Quix Streams' ``Checkpoint.commit``).

An agent's input offsets may be committed only once everything that depends on them is durable. A
checkpoint runs, under the agent's lock (so no message is half-processed meanwhile):

1. **decide**: wall-clock decisions join the outputs (the connection agent: edges gone idle may let
   event time advance, or end the input, on partitions that get no messages any more);
2. **produce**: hand every waiting output to the producer (connection records, rollup-input batches,
   rollup upserts). If a hand-over raises, nothing is dropped and the next checkpoint hands it all over
   again: consumers de-duplicate by key (record id, row key);
3. **ack**: ack, strictly in offset order, the input messages that nothing in memory needs any more
   (``AckRef``s of the current consumer generation; a message of an older one is replayed by its
   partition's new owner);
4. **commit** (Faust's own timer, every ``--commit-interval``): flush the producer, which makes step 2
   durable, then commit the acked offsets.

A checkpoint runs every ``interval`` seconds, and whenever an agent calls ``commit`` because many outputs
wait (the connection agent at 1,000 records, the rollup agent at 2,000 inputs).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rstscope.streams.faust_internals import AckRef, ack
from rstscope.streams.offsets import periodic


class Checkpoint:
    """Decide, produce, ack: the steps above, for one agent."""

    def __init__(self, app: Any, name: str, counters: Counter[str], *,
                 decide: Callable[[], Awaitable[None]] | None = None,
                 produce: Sequence[Callable[[], Awaitable[None]]] = (),
                 done: Callable[[], list[AckRef]],
                 interval: float = 0.2) -> None:
        self.app = app
        self.name = name
        self.counters = counters
        self._decide = decide
        self._produce = produce
        self._done = done
        self.lock = asyncio.Lock()  # held by the agent while it processes a message, and by commit
        periodic(app, interval, counters, f"{name}-checkpoint")(self.commit)

    async def commit(self) -> None:
        async with self.lock:
            if self._decide is not None:
                await self._decide()  # 1. decide
            for produce in self._produce:  # 2. produce
                await produce()
            refs = self._done()  # 3. ack (4. commit: Faust, after flushing the producer)
            self.counters[f"acked:{self.name}"] += ack(self.app, refs)
