"""The streaming commit protocol, one object for both agents (after Quix Streams' ``Checkpoint.commit``).

An agent's input offsets may be committed only once everything that depends on them is durable. A
checkpoint runs, under the agent's lock (so no message is half-processed meanwhile):

0. **settle**: wait until the previous checkpoint's hand-over (step 2) finished; if it raised, the
   checkpoint raises it (its outputs wait again, its messages stay unacked) and the next one retries;
1. **decide**: wall-clock decisions join the outputs (the connection agent: edges gone idle may let
   event time advance, or end the input, on partitions that get no messages any more);
2. **produce**: hand every waiting output to the producer (connection records, rollup-input batches,
   rollup upserts). A step may return a hand-over still to complete (the connection records: aiokafka
   makes a partition's batch wait until the previous one left for the broker, ~8 ms per checkpoint on
   one broker); it then completes in the background while the agent goes on, at most one at a time.
   If a hand-over raises, nothing is dropped and the next checkpoint hands it all over again:
   consumers de-duplicate by key (record id, row key);
3. **ack**: ack, strictly in offset order, the input messages that nothing in memory needs any more
   (``AckRef``s of the current consumer generation; a message of an older one is replayed by its
   partition's new owner), once step 2's hand-over completed: at once, or when it does;
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

Produce = Callable[[], Awaitable[Awaitable[None] | None]]  # a produce step, and the hand-over it leaves


class Checkpoint:
    """Settle, decide, produce, ack: the steps above, for one agent."""

    def __init__(self, app: Any, name: str, counters: Counter[str], *,
                 decide: Callable[[], Awaitable[None]] | None = None,
                 produce: Sequence[Produce] = (),
                 done: Callable[[], list[AckRef]],
                 interval: float = 0.2) -> None:
        self.app = app
        self.name = name
        self.counters = counters
        self._decide = decide
        self._produce = produce
        self._done = done
        self.lock = asyncio.Lock()  # held by the agent while it processes a message, and by commit
        self._held: list[AckRef] = []  # done messages, in offset order, whose outputs are being handed over
        self._handover: asyncio.Future[Any] | None = None  # the hand-over in flight (step 2)
        periodic(app, interval, counters, f"{name}-checkpoint")(self.commit)

    async def commit(self) -> None:
        async with self.lock:
            handover, self._handover = self._handover, None
            if handover is not None:
                await handover  # 0. settle (its messages were acked when it completed)
            if self._decide is not None:
                await self._decide()  # 1. decide
            pending: list[asyncio.Future[Any]] = []
            try:
                for produce in self._produce:  # 2. produce; a hand-over it leaves starts at once, so
                    if (h := await produce()) is not None:  # what it took goes out even if a later step raises
                        pending.append(asyncio.ensure_future(h))
                self._held += self._done()  # 3. ack (4. commit: Faust, after flushing the producer)
            finally:
                if pending:
                    self._handover = asyncio.gather(*pending)
                    self._handover.add_done_callback(self._handed_over)
            if not pending:
                self._ack_held()

    def _handed_over(self, handover: asyncio.Future[Any]) -> None:
        if not handover.cancelled() and handover.exception() is None:
            self._ack_held()  # else they wait for a later hand-over; the next commit raises the error

    def _ack_held(self) -> None:
        held, self._held = self._held, []
        self.counters[f"acked:{self.name}"] += ack(self.app, held)
