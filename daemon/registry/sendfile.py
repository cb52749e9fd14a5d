"""Sending a blob's bytes: zero-copy `sendfile` where possible, else chunks."""

from __future__ import annotations

import asyncio

from aiohttp import web

from daemon.registry.ranges import ByteRange
from daemon.state.store import Blob


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

    fd = blob.fileno()
    transport = request.transport
    if fd is not None and transport is not None and transport.get_extra_info("socket"):
        with open(fd, "rb", buffering=0, closefd=False) as file:
            await asyncio.get_running_loop().sendfile(transport, file, offset, count)
    else:
        async for chunk in blob.chunks(offset, count):
            await response.write(chunk)
    await response.write_eof()
    return response
