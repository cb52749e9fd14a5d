"""TrioBridge: results, exceptions, cancellation both ways, shutdown."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import trio

from daemon.routing.bridge import BridgeClosed, TrioBridge

if TYPE_CHECKING:  # trio-typing's stubs shadow trio's own types
    from trio_typing import TaskStatus


@pytest.fixture
async def bridge() -> AsyncIterator[TrioBridge]:
    running = TrioBridge()
    running.start()
    try:
        yield running
    finally:
        await running.close()


async def _add(a: int, b: int) -> int:
    await trio.sleep(0)
    return a + b


async def test_returns_the_result_from_the_trio_thread(bridge: TrioBridge) -> None:
    async def where() -> str:
        trio.lowlevel.current_trio_token()  # raises outside trio
        return threading.current_thread().name

    assert await bridge.call(_add, 2, 3) == 5
    assert await bridge.call(where) == "peerpull-trio"


async def test_raises_the_trio_side_exception(bridge: TrioBridge) -> None:
    async def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        await bridge.call(fail)
    assert await bridge.call(_add, 1, 1) == 2  # the bridge survives


async def test_asyncio_cancellation_cancels_the_trio_task(bridge: TrioBridge) -> None:
    outcome: list[str] = []

    async def slow() -> None:
        try:
            await trio.sleep(30)
        except trio.Cancelled:
            outcome.append("cancelled")
            raise

    task = asyncio.create_task(bridge.call(slow))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if outcome:
            break
        await asyncio.sleep(0.01)
    assert outcome == ["cancelled"]


async def test_timeout_on_the_asyncio_side_is_forwarded(bridge: TrioBridge) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(bridge.call(trio.sleep, 30), 0.05)


async def test_trio_side_cancellation_reaches_the_caller(bridge: TrioBridge) -> None:
    async def cancelled_inside() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await trio.sleep(30)
        raise RuntimeError("scope was cancelled in trio")

    with pytest.raises(RuntimeError, match="cancelled in trio"):
        await bridge.call(cancelled_inside)


async def test_close_fails_pending_calls_and_joins_the_thread() -> None:
    bridge = TrioBridge()
    bridge.start()
    pending = asyncio.create_task(bridge.call(trio.sleep, 30))
    await asyncio.sleep(0.05)

    await bridge.close()

    with pytest.raises(BridgeClosed):
        await pending
    assert not bridge.running
    assert not any(t.name == "peerpull-trio" for t in threading.enumerate())
    with pytest.raises(BridgeClosed):
        await bridge.call(_add, 1, 2)
    await bridge.close()  # idempotent


async def test_start_task_keeps_a_service_running(bridge: TrioBridge) -> None:
    state: dict[str, int] = {"ticks": 0}

    async def service(*, task_status: TaskStatus[str]) -> None:
        task_status.started("up")
        while True:
            state["ticks"] += 1
            await trio.sleep(0.01)

    assert await bridge.start_task(service) == "up"
    await asyncio.sleep(0.1)
    assert state["ticks"] > 2


async def test_round_trip_costs_well_under_a_millisecond(bridge: TrioBridge) -> None:
    async def noop() -> None:
        return None

    loop = asyncio.get_running_loop()
    samples = []
    for _ in range(200):
        start = loop.time()
        await bridge.call(noop)
        samples.append(loop.time() - start)
    samples.sort()
    assert samples[len(samples) // 2] < 0.002
