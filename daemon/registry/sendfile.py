"""Sending a blob's bytes: zero-copy `sendfile` where possible, else chunks."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from daemon.registry.ranges import ByteRange
from daemon.state.store import Blob, StoreUnavailable

log = logging.getLogger(__name__)


def blob_headers(blob: Blob, byte_range: ByteRange | None) -> dict[str, str]:
    """The headers upstream registries send with a blob (or a part of it)."""
    length = blob.size if byte_range is None else byte_range.length
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(length),
        "Docker-Content-Digest": blob.digest,
        "Accept-Ranges": "bytes",
        "Etag": f'"{blob.digest}"',
        "Cache-Control": "max-age=31536000",
        "X-Content-Type-Options": "nosniff",
    }
    if byte_range is not None:
        headers["Content-Range"] = byte_range.content_range
    return headers


async def send_blob(
    request: web.Request, blob: Blob, byte_range: ByteRange | None, *, head: bool
) -> web.StreamResponse:
    """Answer 200 (or 206 for a range) with the blob's bytes; HEAD sends none."""
    response = web.StreamResponse(
        status=200 if byte_range is None else 206,
        headers=blob_headers(blob, byte_range),
    )
    offset = 0 if byte_range is None else byte_range.first
    count = blob.size if byte_range is None else byte_range.length
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
