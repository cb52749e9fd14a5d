"""The mirror path: content this node does not hold, streamed from a peer.

A miss is resolved through the router (the digest, or `registry/repo:tag`
for a tag) within the resolve timeout, and fetched over the peer transport
from the first peer that answers. A whole blob is received into a spool
file while its digest is checked and goes to containerd (zero-copy) only
once it matches; a ranged request streams straight through. A body that
breaks midway is resumed from another peer with a `Range` at the byte
reached; a blob that fails its check is fetched again from the next peer.
When no peer answers in time, or none sends good bytes, the local 404 goes
out so containerd falls back to the next host.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from daemon.registry import media, notes
from daemon.registry.local import Answer, PullRequest, count_request
from daemon.registry.server import render
from daemon.routing.router import Peer, Router
from daemon.state.store import FileBlob
from transport.peer import PeerClient, PeerError, PeerResponse, PeerStreamBroken

log = logging.getLogger(__name__)

# Connect plus response headers, per peer; a hung peer costs at most this.
PEER_HEADER_TIMEOUT_S = 1.0
AVOID_FAILED_PEER_S = 30.0
FORWARDED_HEADERS = (
    "content-type",
    "content-length",
    "docker-content-digest",
    "content-range",
    "accept-ranges",
    "etag",
    "cache-control",
    "x-content-type-options",
)
MANIFEST_ACCEPT = ", ".join(sorted(media.MANIFEST_TYPES))


@dataclass
class Fetch:
    """One request on its way to peers: what, where, with which headers, and
    the peers still to try (each is tried at most once)."""

    pull: PullRequest
    path: str
    headers: dict[str, str]
    peers: list[Peer]


@dataclass(frozen=True)
class Span:
    """The bytes a request covers: `first` and `length` of a blob of `size`."""

    first: int
    length: int
    size: int | None


class PeerMirror:
    """Serves misses from peers; implements daemon.registry.server.Mirror."""

    def __init__(
        self,
        router: Router,
        client: PeerClient,
        *,
        resolve_timeout_s: float,
        resolve_retries: int,
        resolve_tags: bool,
        spool_dir: Path | None = None,
        header_timeout_s: float = PEER_HEADER_TIMEOUT_S,
        avoid_s: float = AVOID_FAILED_PEER_S,
    ) -> None:
        self._router = router
        self._client = client
        self._resolve_timeout_s = resolve_timeout_s
        self._retries = resolve_retries
        self._resolve_tags = resolve_tags
        self._header_timeout_s = header_timeout_s
        self._avoid_s = avoid_s
        self._spool_dir = spool_dir
        self._avoided: dict[str, float] = {}

    async def serve(
        self, request: web.Request, pull: PullRequest, miss: Answer
    ) -> web.StreamResponse:
        ref = pull.ref
        key = ref.digest or (
            ref.tag_key if self._resolve_tags and ref.registry else None
        )
        fetch = Fetch(
            pull,
            request.rel_url.raw_path + (f"?ns={ref.registry}" if ref.registry else ""),
            self._request_headers(request, pull),
            await self._candidates(key) if key else [],
        )

        if pull.kind == "manifests" and not pull.head:
            found = await self._fetch_manifest(fetch)
            count_request(ref, found is not None, "peer")
            request[notes.SOURCE] = "peer" if found is not None else "none"
            if found is None:
                return _render(miss)
            status, forwarded, body = found
            return web.Response(status=status, headers=forwarded, body=body)

        reply = await self._first_reply(fetch, "HEAD" if pull.head else "GET")
        count_request(ref, reply is not None, "peer")
        request[notes.SOURCE] = "peer" if reply is not None else "none"
        if reply is None:
            return _render(miss)
        peer, response = reply
        request[notes.PEER] = peer.peer_id
        if pull.head:
            await response.close()
            return _headers_only(response)
        return await self._stream_blob(request, fetch, peer, response, miss)

    # peers

    async def _candidates(self, key: str) -> list[Peer]:
        """Up to `retries` peers holding `key` that are not being avoided."""
        now = time.monotonic()
        self._avoided = {p: t for p, t in self._avoided.items() if t > now}
        found: list[Peer] = []
        try:
            async with asyncio.timeout(self._resolve_timeout_s):
                wanted = self._retries + len(self._avoided)
                async for peer in self._router.resolve(key, wanted):
                    if peer.peer_id not in self._avoided:
                        found.append(peer)
                    if len(found) >= self._retries:
                        break
        except TimeoutError:
            pass
        return found

    def _avoid(self, peer: Peer, reason: str) -> None:
        log.info("peer failed", extra={"peer": peer.peer_id, "reason": reason[:200]})
        self._avoided[peer.peer_id] = time.monotonic() + self._avoid_s

    @staticmethod
    def _request_headers(request: web.Request, pull: PullRequest) -> dict[str, str]:
        headers = {"x-peerpull-mirrored": "true"}
        if pull.kind == "manifests":
            headers["accept"] = request.headers.get("Accept", MANIFEST_ACCEPT)
        if pull.range_header is not None:
            headers["range"] = pull.range_header
        if "traceparent" in request.headers:
            headers["traceparent"] = request.headers["traceparent"]
        return headers

    async def _first_reply(
        self, fetch: Fetch, method: str = "GET", resume: Span | None = None
    ) -> tuple[Peer, PeerResponse] | None:
        """The first peer whose answer has acceptable headers, trying in order."""
        while fetch.peers:
            peer = fetch.peers.pop(0)
            try:
                response = await self._client.fetch(
                    peer.peer_id,
                    peer.host,
                    method,
                    fetch.path,
                    fetch.headers,
                    self._header_timeout_s,
                )
            except PeerError as err:
                self._avoid(peer, repr(err))
                continue
            problem = _check_headers(response, fetch.pull, resume)
            if problem is None:
                return peer, response
            await response.close()
            if response.status == 404:
                log.debug("peer no longer holds it", extra={"peer": peer.peer_id})
            else:
                self._avoid(peer, problem)
        return None

    # manifests

    async def _fetch_manifest(
        self, fetch: Fetch
    ) -> tuple[int, dict[str, str], bytes] | None:
        """A manifest from the first peer whose bytes match its digest."""
        digest = fetch.pull.ref.digest
        while fetch.peers:
            reply = await self._first_reply(fetch)
            if reply is None:
                return None
            peer, response = reply
            try:
                body = await _read_all(response, media.MANIFEST_LIMIT_BYTES)
            except PeerError as err:
                self._avoid(peer, repr(err))
                continue
            finally:
                await response.close()
            announced = response.headers.get("docker-content-digest", "")
            actual = "sha256:" + hashlib.sha256(body).hexdigest()
            if announced != actual or (digest is not None and digest != actual):
                self._avoid(peer, "manifest bytes do not match their digest")
                continue
            return response.status, _forwarded(response), body
        return None

    # blobs

    async def _stream_blob(
        self,
        request: web.Request,
        fetch: Fetch,
        peer: Peer,
        response: PeerResponse,
        miss: Answer,
    ) -> web.StreamResponse:
        pull = fetch.pull
        if pull.range_header is None and pull.ref.digest is not None:
            return await self._verified_blob(request, fetch, peer, response, miss)
        # TODO(containerd sends ranged first fetches): a part of a blob cannot be
        # checked against the blob's digest; ranged answers are checked for length
        # and Content-Range only, and containerd checks the whole on commit.
        out = web.StreamResponse(status=response.status, headers=_forwarded(response))
        await out.prepare(request)
        received = await self._receive(fetch, peer, response, out.write)
        if received is None:
            return _cut(request, out, pull, "no peer left to resume from")
        await out.write_eof()
        return out

    async def _verified_blob(
        self,
        request: web.Request,
        fetch: Fetch,
        peer: Peer,
        response: PeerResponse,
        miss: Answer,
    ) -> web.StreamResponse:
        """Receive the whole blob into a spool file, check its digest, then send it.

        Nothing unverified reaches containerd: it resumes a cut download with a
        Range from wherever it can, so a corrupt prefix once sent would be
        completed by another source and the pull would fail at commit. A blob
        that fails its check is fetched again from the next peer, and when no
        peer is left the answer is still a clean 404.
        """
        pull = fetch.pull
        while True:
            forwarded = _forwarded(response)
            try:
                # closed by the `with` below; opened here to catch its failure
                spool_file = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115
            except OSError as err:
                await response.close()
                log.warning("spool unavailable", extra={"error": str(err)})
                return _render(miss)
            with spool_file as spool:
                hasher = hashlib.sha256()
                write = _spooler(spool, hasher)
                done = await self._receive(fetch, peer, response, write)
                if done is not None:
                    peer = done
                    if "sha256:" + hasher.hexdigest() == pull.ref.digest:
                        spool.flush()
                        return await _send_spool(request, pull, forwarded, spool)
                    self._avoid(peer, "blob bytes do not match their digest")
            fetch.headers.pop("range", None)
            reply = await self._first_reply(fetch)
            if reply is None:
                log.warning(
                    "no peer sent good bytes", extra={"digest": pull.ref.digest}
                )
                return _render(miss)
            peer, response = reply

    async def _receive(
        self,
        fetch: Fetch,
        peer: Peer,
        response: PeerResponse,
        write: Callable[[bytes], Awaitable[None]],
    ) -> Peer | None:
        """Pass a body's bytes to `write`, resuming from other peers with Range
        when it breaks; the peer that finished it, or None when none could."""
        span = _span_of(response)
        received = 0
        while True:
            try:
                async for chunk in response:
                    if received + len(chunk) > span.length:
                        raise PeerStreamBroken("peer sent more bytes than announced")
                    await write(chunk)
                    received += len(chunk)
                if received != span.length:
                    raise PeerStreamBroken("peer body ended early")
                await response.close()
                return peer
            except PeerError as err:
                await response.close()
                self._avoid(peer, repr(err))
                resume = Span(span.first + received, span.length - received, span.size)
                last = span.first + span.length - 1
                fetch.headers["range"] = f"bytes={resume.first}-{last}"
                reply = await self._first_reply(fetch, resume=resume)
                if reply is None:
                    return None
                peer, response = reply


def _check_headers(
    response: PeerResponse, pull: PullRequest, resume: Span | None
) -> str | None:
    """Why a peer's headers are unacceptable, or None when they are fine."""
    ranged = resume is not None or pull.range_header is not None
    if response.status != (206 if ranged else 200):
        return f"status {response.status}"
    length = response.headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):
        return "no content-length"
    announced = response.headers.get("docker-content-digest")
    if pull.ref.digest is not None and announced not in (None, pull.ref.digest):
        return "wrong docker-content-digest"
    try:
        span = _span_of(response)
    except ValueError:
        return "bad content-range"
    if resume is not None and (span.first, span.length) != (
        resume.first,
        resume.length,
    ):
        return "resumed range does not match"
    return None


def _span_of(response: PeerResponse) -> Span:
    length = int(response.headers["content-length"])
    content_range = response.headers.get("content-range")
    if content_range is None:
        return Span(0, length, length)
    unit, _, rest = content_range.partition(" ")
    positions, _, size = rest.partition("/")
    first, _, _ = positions.partition("-")
    if unit != "bytes" or not first.isdigit():
        raise ValueError(f"bad content-range {content_range[:64]!r}")
    return Span(int(first), length, int(size) if size.isdigit() else None)


def _forwarded(response: PeerResponse) -> dict[str, str]:
    return {
        _canonical(name): response.headers[name]
        for name in FORWARDED_HEADERS
        if name in response.headers
    }


def _canonical(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _headers_only(response: PeerResponse) -> web.Response:
    headers = _forwarded(response)
    length = headers.pop("Content-Length", "0")
    reply = web.Response(status=response.status, headers=headers)
    reply.headers["Content-Length"] = length
    return reply


async def _read_all(response: PeerResponse, limit: int) -> bytes:
    parts, total = [], 0
    async for chunk in response:
        total += len(chunk)
        if total > limit:
            raise PeerStreamBroken("manifest larger than the limit")
        parts.append(chunk)
    return b"".join(parts)


def _render(answer: Answer) -> web.Response:
    headers = dict(answer.headers)
    headers.pop("Content-Length", None)
    return web.Response(status=answer.status, headers=headers, body=answer.body)


def _spooler(spool: BinaryIO, hasher: Any) -> Callable[[bytes], Awaitable[None]]:
    """A writer that appends to the spool file and feeds the digest."""

    async def write(chunk: bytes) -> None:
        spool.write(chunk)
        hasher.update(chunk)

    return write


async def _send_spool(
    request: web.Request,
    pull: PullRequest,
    headers: dict[str, str],
    spool: BinaryIO,
) -> web.StreamResponse:
    """Send a verified spool file as the blob, zero-copy like a local blob."""
    size = spool.seek(0, os.SEEK_END)
    assert pull.ref.digest is not None
    blob = FileBlob(pull.ref.digest, os.dup(spool.fileno()), size)
    answer = Answer(200, headers, blob=blob, first=0, length=size)
    return await render(request, answer)


def _cut(
    request: web.Request, out: web.StreamResponse, pull: PullRequest, why: str
) -> web.StreamResponse:
    """End a response whose headers are out without its last bytes: the client
    sees a body shorter than Content-Length and discards it."""
    log.warning("mirror stream cut", extra={"digest": pull.ref.digest, "reason": why})
    if request.transport is not None:
        request.transport.abort()
    return out
