"""Send backpressure and response rendering shared by the H3 server and test peers.

Neither QUIC engine's `send_data` ever blocks: it appends to the stream's send
queue. A SendGate makes a body writer wait while a stream has more than
HIGH_WATER_BYTES queued and wakes it once ACKs bring the queue under half,
so a stream holds at most about HIGH_WATER_BYTES + one chunk in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from transport.engine import Engine

HIGH_WATER_BYTES = 2 << 20
H3_REQUEST_CANCELLED = 0x10C
H3_INTERNAL_ERROR = 0x102


class StreamAborted(Exception):
    """The peer reset or stopped the stream, or the connection ended."""


class SendGate:
    """Per-stream waits for the send queue to drain (a connection's streams)."""

    def __init__(self, engine: Engine, quic: Any, high_water: int = HIGH_WATER_BYTES):
        self._engine = engine
        self._quic = quic
        self._high = high_water
        self._waiters: dict[int, asyncio.Event] = {}

    def queued(self, stream_id: int) -> int:
        """Bytes queued on the stream and not yet acknowledged."""
        return self._engine.send_buffer_size(self._quic, stream_id)

    async def wait_room(self, stream_id: int) -> None:
        """Return once the stream's queue is below the high watermark."""
        if self.queued(stream_id) <= self._high:
            return
        event = asyncio.Event()
        self._waiters[stream_id] = event
        try:
            await event.wait()
        finally:
            self._waiters.pop(stream_id, None)

    def wake(self) -> None:
        """Release streams whose queue fell under half the watermark."""
        for stream_id, event in list(self._waiters.items()):
            if self.queued(stream_id) < self._high // 2:
                event.set()


def response_headers(
    status: int, headers: Mapping[str, str]
) -> list[tuple[bytes, bytes]]:
    """H3 header list: `:status` first, then lowercase names."""
    fields = [(b":status", str(status).encode())]
    fields.extend(
        (name.lower().encode(), value.encode()) for name, value in headers.items()
    )
    return fields


def request_fields(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[dict[str, str], dict[str, str]]:
    """Split an H3 header list into pseudo-headers and ordinary headers."""
    pseudo: dict[str, str] = {}
    plain: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key.startswith(":"):
            pseudo[key] = text
        else:
            plain[key] = text
    return pseudo, plain
