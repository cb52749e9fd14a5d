"""The registry API: pull-only OCI Distribution endpoints over HTTP/1.1.

Routes: `GET /v2/`; `GET|HEAD /v2/<name>/manifests/<tag|digest>`;
`GET|HEAD /v2/<name>/blobs/<digest>`; `/readyz` and `/livez`. The `ns`
query parameter names the registry a request is for. Any other method on
`/v2/` is 405. Local content is answered at once; a miss goes to the mirror
path (peers) unless the request itself comes from a peer
(`X-PeerPull-Mirrored: true`), and otherwise is an immediate 404 so that
containerd moves on to the next host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from daemon.observability.metrics import HTTP_REQUEST_DURATION
from daemon.registry import notes
from daemon.registry.errors import error_response
from daemon.registry.local import (
    Answer,
    LocalContent,
    PullRequest,
    count_request,
)
from daemon.registry.sendfile import send_blob

log = logging.getLogger(__name__)

MIRRORED_HEADER = "X-PeerPull-Mirrored"
API_VERSION = ("Docker-Distribution-Api-Version", "registry/2.0")
HEALTH_PATHS = frozenset({"/readyz", "/livez"})

ReadyCheck = Callable[[], Awaitable[bool]]


class Mirror(Protocol):
    """Serves a request the node does not hold from its peers (or says 404)."""

    async def serve(
        self, request: web.Request, pull: PullRequest, miss: Answer
    ) -> web.StreamResponse:
        """Stream the content from a peer, or answer `miss` at once."""


class RegistryApi:
    """HTTP/1.1 handlers over LocalContent and, for misses, a Mirror."""

    def __init__(
        self, local: LocalContent, ready: ReadyCheck, mirror: Mirror | None = None
    ) -> None:
        self._local = local
        self._ready = ready
        self._mirror = mirror

    def application(self) -> web.Application:
        """The aiohttp application with routes and the metrics middleware."""
        app = web.Application(middlewares=[_observe], client_max_size=0)
        app.router.add_get("/readyz", self.readyz, allow_head=True)
        app.router.add_get("/livez", self.livez, allow_head=True)
        app.router.add_route("*", "/v2/{tail:.*}", self.v2)
        app.router.add_route("*", "/v2", self.v2)
        app.on_response_prepare.append(_add_api_version)
        return app

    async def livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if await self._ready():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not ready\n")

    async def v2(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return error_response(
                "UNSUPPORTED",
                {"method": request.method[:32]},
                headers={"Allow": "GET, HEAD"},
            )
        answer = await self._local.answer(
            request.method,
            request.rel_url.raw_path,
            request.query.getall("ns", []),
            request.headers.get("Range"),
        )
        pull = answer.request
        mirrored = request.headers.get(MIRRORED_HEADER, "").lower() == "true"
        if answer.missed and pull is not None and self._mirror and not mirrored:
            return await self._mirror.serve(request, pull, answer)
        if pull is not None:
            count_request(pull.ref, answer.status < 400, "local")
            request[notes.SOURCE] = "local" if answer.status < 400 else "none"
        return await render(request, answer)


async def render(request: web.Request, answer: Answer) -> web.StreamResponse:
    """Send an Answer over HTTP/1.1 (blobs with sendfile where possible)."""
    try:
        if answer.blob is not None:
            return await send_blob(request, answer, head=request.method == "HEAD")
        headers = dict(answer.headers)
        headers.pop("Content-Length", None)  # aiohttp sets it from the body
        return web.Response(status=answer.status, headers=headers, body=answer.body)
    finally:
        await answer.close()


async def _add_api_version(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/v2"):
        response.headers.setdefault(*API_VERSION)


@web.middleware
async def _observe(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Time each request into the HTTP histogram; log it at DEBUG."""
    started = time.perf_counter()
    code, sent = 500, None
    try:
        response = await handler(request)
        code, sent = response.status, response.content_length
        return response
    except web.HTTPException as err:
        code = err.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = _handler_label(request.path)
        method = request.method if request.method in ("GET", "HEAD") else "other"
        HTTP_REQUEST_DURATION.labels(
            handler=route, method=method, code=str(code)
        ).observe(elapsed)
        if request.path not in HEALTH_PATHS:
            log.debug(
                "request",
                extra={
                    "method": request.method[:16],
                    "path": request.path_qs[:512],
                    "status": code,
                    "bytes": sent,
                    "source": request.get(notes.SOURCE),
                    "peer": request.get(notes.PEER),
                    "seconds": round(elapsed, 6),
                },
            )


def _handler_label(path: str) -> str:
    if path in HEALTH_PATHS:
        return path
    if path in ("/v2", "/v2/"):
        return "/v2/"
    if "/manifests/" in path:
        return "manifests"
    if "/blobs/" in path:
        return "blobs"
    return "other"
