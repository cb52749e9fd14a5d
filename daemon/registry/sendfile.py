"""Sending a blob's bytes: zero-copy `sendfile` where possible, else chunks."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from daemon.registry.local import Answer
from daemon.state.store import Blob, StoreUnavailable

log = logging.getLogger(__name__)


async def send_blob(
    request: web.Request, answer: Answer, *, head: bool
) -> web.StreamResponse:
    """Send a blob Answer (200 or 206) with its bytes; HEAD sends none."""
    blob = answer.blob
    assert blob is not None
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    offset, count = answer.first, answer.length
    await response.prepare(request)
    if head or count == 0:
        await response.write_eof()
        return response

    try:
        sent = await _send_body(request, response, blob, offset, count)
    except (OSError, StoreUnavailable) as err:
        sent, reason = -1, str(err)
    else:
        reason = "blob shorter than announced"
    if sent != count:
        # Headers are out: the only honest signal left is a cut connection,
        # which the client sees as a body shorter than Content-Length.
        log.warning(
            "blob stream broken", extra={"digest": blob.digest, "error": reason}
        )
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def _send_body(
    request: web.Request,
    response: web.StreamResponse,
    blob: Blob,
    offset: int,
    count: int,
) -> int:
    """Send `count` bytes from `offset`; returns how many were sent."""
    fd = blob.fileno()
    transport = request.transport
    if fd is not None and transport is not None and transport.get_extra_info("socket"):
        with open(fd, "rb", buffering=0, closefd=False) as file:
            loop = asyncio.get_running_loop()
            return await loop.sendfile(transport, file, offset, count)
    sent = 0
    async for chunk in blob.chunks(offset, count):
        await response.write(chunk)
        sent += len(chunk)
    return sent
