"""The commit protocol's order (streams/checkpoint.py): a message is acked only after the outputs that
depend on it were handed to the producer, strictly in offset order, also when a hand-over completes in
the background or fails. The app here is the part of Faust the checkpoint touches (timer, consumer acks)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from typing import Any

import pytest

from rstscope.streams.checkpoint import Checkpoint
from rstscope.streams.faust_internals import AckRef


class Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, ref: AckRef) -> None:
        self.acked.append(ref.offset)


class App:
    consumer_generation_id = 1

    def __init__(self) -> None:
        self.consumer = Consumer()

    def timer(self, interval: float, name: str) -> Any:
        return lambda fun: fun  # the test calls commit itself


class Agent:
    """Messages become done one offset at a time; a produce step hands its outputs over in the background
    (through a gate the test opens), or fails."""

    def __init__(self) -> None:
        self.app = App()
        self.next = 0
        self.done_refs: list[AckRef] = []
        self.gate = asyncio.Event()
        self.fail = False
        self.handed: list[int] = []
        self.cp = Checkpoint(self.app, "t", Counter(), produce=(self.produce,), done=self.done)

    def take(self, n: int) -> None:
        for _ in range(n):
            self.done_refs.append(AckRef(None, self.next, "t", 1))
            self.next += 1

    def done(self) -> list[AckRef]:
        refs, self.done_refs = self.done_refs, []
        return refs

    async def produce(self) -> Awaitable[None] | None:
        upto = self.next

        async def handover() -> None:
            await self.gate.wait()
            if self.fail:
                raise OSError("the broker went away")
            self.handed.append(upto)

        return handover()


async def test_acks_wait_for_the_handover_that_runs_in_the_background() -> None:
    a = Agent()
    a.take(3)
    await a.cp.commit()  # returns before the hand-over completed: the agent goes on
    assert a.app.consumer.acked == []
    a.take(2)  # processed meanwhile: not acked by the first hand-over
    a.gate.set()
    await asyncio.sleep(0.01)  # the hand-over's task, gather, then the checkpoint's callback
    assert a.handed == [3] and a.app.consumer.acked == [0, 1, 2]
    await a.cp.commit()
    await asyncio.sleep(0.01)  # the hand-over's task, gather, then the checkpoint's callback
    assert a.app.consumer.acked == [0, 1, 2, 3, 4]


async def test_the_next_checkpoint_settles_the_previous_handover_first() -> None:
    a = Agent()
    a.take(1)
    await a.cp.commit()
    a.take(1)
    second = asyncio.ensure_future(a.cp.commit())
    await asyncio.sleep(0.01)
    assert not second.done() and a.app.consumer.acked == []  # at most one hand-over in flight
    a.gate.set()
    await second
    await asyncio.sleep(0.01)  # the hand-over's task, gather, then the checkpoint's callback
    assert a.app.consumer.acked == [0, 1]


async def test_a_failed_handover_acks_nothing_and_its_messages_go_with_the_next() -> None:
    a = Agent()
    a.take(2)
    a.fail = True
    await a.cp.commit()
    a.gate.set()
    await asyncio.sleep(0.01)  # the hand-over's task, gather, then the checkpoint's callback
    assert a.app.consumer.acked == []
    a.take(1)
    with pytest.raises(OSError):  # the next checkpoint reports it, as a produce step that raised would
        await a.cp.commit()
    assert a.app.consumer.acked == []
    a.fail = False
    await a.cp.commit()  # hands over again; acks the held messages and the new one, in order
    await asyncio.sleep(0.01)  # the hand-over's task, gather, then the checkpoint's callback
    assert a.app.consumer.acked == [0, 1, 2]


async def test_without_a_handover_acks_at_once() -> None:
    a = Agent()

    async def nothing() -> None:
        return None

    cp = Checkpoint(a.app, "u", Counter(), produce=(nothing,), done=a.done)
    a.take(2)
    await cp.commit()
    assert a.app.consumer.acked == [0, 1]


async def test_a_step_that_raises_after_a_handover_loses_nothing() -> None:
    """The hand-over a step left goes out even when a later step raises; the messages are acked only
    after a later checkpoint completes."""
    a = Agent()
    calls = {"n": 0}

    async def flaky() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("the rollup input is away")

    a.cp = Checkpoint(a.app, "v", Counter(), produce=(a.produce, flaky), done=a.done)
    a.gate.set()
    a.take(2)
    with pytest.raises(OSError):
        await a.cp.commit()
    await asyncio.sleep(0.01)
    assert a.handed == [2] and a.app.consumer.acked == []  # handed over, but not acked: the step raised
    await a.cp.commit()
    await asyncio.sleep(0.01)
    assert a.app.consumer.acked == [0, 1]
