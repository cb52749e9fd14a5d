"""TrioBridge: one daemon thread running trio, called from asyncio.

py-libp2p runs on trio only, the daemon on asyncio. The bridge owns one
thread with one trio run and one nursery; asyncio code awaits trio functions
through it and gets their results (or exceptions) back through asyncio
futures. Contract:

- Only plain data should cross: the trio objects stay on the trio thread.
- Cancelling the awaiting asyncio task cancels the trio task (its own
  `trio.CancelScope`); the asyncio side still sees `CancelledError`.
- If the trio side stops first (the bridge closes), pending callers get
  `BridgeClosed` instead of waiting forever; the trio `Cancelled` that
  caused it is re-raised inside trio, never swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

_START_TIMEOUT_S = 10.0


class BridgeClosed(RuntimeError):
    """The trio thread is not running (never started, stopping or stopped)."""


class TrioBridge:
    """Runs trio in a daemon thread; `call` and `start_task` reach it from asyncio."""

    def __init__(self, name: str = "peerpull-trio") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        """True while the trio thread accepts calls."""
        return self._token is not None and self._thread is not None

    def start(self) -> None:
        """Start the thread and wait until trio is ready to take calls."""
        if self._thread is not None:
            raise RuntimeError("bridge already started")
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT_S):
            raise BridgeClosed("trio thread did not start")
        if self._error is not None:
            raise BridgeClosed("trio thread failed") from self._error

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await fn(*args)` on the trio thread and return its result."""
        result: T = await self._submit(fn, args, background=False)
        return result

    async def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start a long-lived trio task with `nursery.start` and return its
        `task_status.started(value)`; the task keeps running until `close`."""
        return await self._submit(fn, args, background=True)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Cancel everything still running on the trio side and join the thread."""
        thread, token, nursery = self._thread, self._token, self._nursery
        self._token = None
        if thread is None:
            return
        if token is not None and nursery is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(nursery.cancel_scope.cancel)
        await asyncio.to_thread(thread.join, timeout_s)
        if thread.is_alive():
            raise BridgeClosed(f"trio thread did not stop within {timeout_s} s")

    # trio side

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:  # reported to start() or dropped at exit
            self._error = exc
        finally:
            self._token = None
            self._started.set()

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._started.set()
            await trio.sleep_forever()

    # asyncio side

    async def _submit(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], background: bool
    ) -> Any:
        token, nursery = self._token, self._nursery
        if token is None or nursery is None:
            raise BridgeClosed("trio bridge is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        scope = trio.CancelScope()

        def forward_cancel(done: asyncio.Future[Any]) -> None:
            if done.cancelled():
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)

        future.add_done_callback(forward_cancel)
        runner = _Runner(loop, future, scope, fn, args, nursery, background)
        try:
            token.run_sync_soon(nursery.start_soon, runner.run)
        except trio.RunFinishedError as err:
            raise BridgeClosed("trio bridge has stopped") from err
        return await future


class _Runner:
    """One call: runs on trio, settles the asyncio future exactly once."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        scope: trio.CancelScope,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        nursery: trio.Nursery,
        background: bool,
    ) -> None:
        self._loop = loop
        self._future = future
        self._scope = scope
        self._fn = fn
        self._args = args
        self._nursery = nursery
        self._background = background

    async def run(self) -> None:
        try:
            with self._scope:
                if self._background:
                    result = await self._nursery.start(self._fn, *self._args)
                else:
                    result = await self._fn(*self._args)
        except Exception as exc:
            self._settle(exc=exc)
        except BaseException as exc:
            self._settle(exc=BridgeClosed(f"trio side stopped: {exc!r}"))
            raise
        else:
            if self._scope.cancelled_caught:
                self._settle(exc=asyncio.CancelledError())
            else:
                self._settle(result=result)

    def _settle(self, result: Any = None, exc: BaseException | None = None) -> None:
        future = self._future

        def apply() -> None:
            if future.done():
                return
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            elif exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the asyncio loop has closed
            self._loop.call_soon_threadsafe(apply)
