"""A TCP proxy on 127.0.0.0/8 that caps throughput, to play a slow upstream.

Used by the local cluster and the rollout benchmark in front of
docker-registry: every byte from the registry to its clients passes one
shared token bucket, so all clients together get at most `rate_bytes_s`,
like one registry behind one link. Runs its own asyncio loop in a thread.
"""

from __future__ import annotations

import asyncio
import threading
import time


class TokenBucket:
    """Bytes per second shared by every connection through the proxy."""

    def __init__(self, rate_bytes_s: float) -> None:
        self.rate = rate_bytes_s
        self._tokens = 0.0
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, count: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(
                self.rate * 0.05, self._tokens + (now - self._at) * self.rate
            )
            self._at = now
            self._tokens -= count
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


class ThrottledProxy:
    """Listens on `host:port` (0 picks one) and forwards to `target`, capped."""

    def __init__(self, host: str, target: tuple[str, int], rate_bytes_s: float) -> None:
        self.host = host
        self.target = target
        self.rate_bytes_s = rate_bytes_s
        self.port = 0
        self.bytes_down = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._bucket = TokenBucket(self.rate_bytes_s)
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, throttle=False),
            self._pipe(up_reader, writer, throttle=True),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: bool
    ) -> None:
        try:
            while data := await reader.read(64 * 1024):
                if throttle:
                    await self._bucket.take(len(data))
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
