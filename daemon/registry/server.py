"""The registry API: pull-only OCI Distribution endpoints over HTTP/1.1.

Routes: `GET /v2/`; `GET|HEAD /v2/<name>/manifests/<tag|digest>`;
`GET|HEAD /v2/<name>/blobs/<digest>`; `/readyz` and `/livez`. The `ns`
query parameter names the registry a request is for. Any other method on
`/v2/` is 405. Content comes from the local store only in this version: a
miss is an immediate 404 so that containerd moves on to the next host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from daemon.config import RegistryConfig
from daemon.observability.metrics import (
    HTTP_REQUEST_DURATION,
    MIRROR_REQUESTS,
    registry_label,
)
from daemon.registry import media
from daemon.registry.errors import error_response
from daemon.registry.ranges import RangeNotSatisfiable, parse_range
from daemon.registry.reference import (
    Reference,
    ReferenceError,
    is_digest,
    normalise_name,
    parse_digest,
    parse_name,
    parse_registry,
    parse_tag,
)
from daemon.registry.sendfile import send_blob
from daemon.state.store import ContentStore, StoreUnavailable, read_small

log = logging.getLogger(__name__)

MIRRORED_HEADER = "X-PeerPull-Mirrored"
API_VERSION = ("Docker-Distribution-Api-Version", "registry/2.0")
HEALTH_PATHS = frozenset({"/readyz", "/livez"})

ReadyCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Request:
    """A parsed `/v2/<name>/<kind>/<reference>` request."""

    kind: str  # "manifests" or "blobs"
    ref: Reference
    head: bool
    mirrored: bool


def parse_request(request: web.Request) -> Request | None:
    """Parse the path and `ns`; None for a path that is not a pull endpoint."""
    path = request.rel_url.raw_path
    if "%" in path:
        raise ReferenceError("NAME_INVALID", "percent-encoded paths are not accepted")
    parts = path.split("/")
    if len(parts) < 5 or parts[1] != "v2" or parts[-2] not in ("manifests", "blobs"):
        return None
    namespaces = request.query.getall("ns", [])
    if len(namespaces) > 1:
        raise ReferenceError("NAME_INVALID", "more than one ns parameter")
    registry = parse_registry(namespaces[0] if namespaces else None)
    name = normalise_name(registry, parse_name("/".join(parts[2:-2])))
    kind, target = parts[-2], parts[-1]
    if kind == "blobs" or is_digest(target):
        ref = Reference(registry, name, digest=parse_digest(target))
    else:
        ref = Reference(registry, name, tag=parse_tag(target))
    return Request(
        kind=kind,
        ref=ref,
        head=request.method == "HEAD",
        mirrored=request.headers.get(MIRRORED_HEADER, "").lower() == "true",
    )


class RegistryApi:
    """Handlers for the registry API over one ContentStore."""

    def __init__(
        self, config: RegistryConfig, store: ContentStore, ready: ReadyCheck
    ) -> None:
        self._config = config
        self._store = store
        self._ready = ready

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
        if request.rel_url.raw_path in ("/v2", "/v2/"):
            return web.json_response({})
        try:
            parsed = parse_request(request)
        except ReferenceError as err:
            return error_response(err.code, str(err))
        if parsed is None:
            return error_response("UNSUPPORTED", "not a pull endpoint", status=404)
        if parsed.kind == "manifests":
            return await self._manifest(parsed)
        return await self._blob(request, parsed)

    def _served(self, ref: Reference) -> bool:
        """Whether this registry is mirrored and the reference is not filtered."""
        if ref.registry is not None and not self._config.mirrors(ref.registry):
            return False
        key = ref.tag_key if ref.tag is not None else ref.repository
        return not self._config.filtered(key)

    def _count(self, ref: Reference, hit: bool) -> None:
        MIRROR_REQUESTS.labels(
            registry=registry_label(ref.registry),
            cache="hit" if hit else "miss",
            source="local",
        ).inc()

    async def _manifest(self, req: Request) -> web.StreamResponse:
        ref = req.ref
        try:
            found = await self._find_manifest(ref) if self._served(ref) else None
        except StoreUnavailable as err:
            log.warning("store unavailable", extra={"error": str(err)})
            found = None
        self._count(ref, found is not None)
        if found is None:
            return error_response("MANIFEST_UNKNOWN", {"ref": _ref_text(ref)})
        digest, media_type, content = found
        return web.Response(
            body=content,
            headers={
                "Content-Type": media_type,
                "Docker-Content-Digest": digest,
                "Etag": f'"{digest}"',
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def _find_manifest(self, ref: Reference) -> tuple[str, str, bytes] | None:
        """Digest, media type and bytes of a local manifest, or None."""
        declared: str | None = None
        digest = ref.digest
        if digest is None:
            if ref.registry is None:
                return None  # a tag means nothing without its registry
            target = await self._store.resolve(ref.tag_key)
            if target is None:
                return None
            digest, declared = target.digest, target.media_type
        content = await read_small(self._store, digest, media.MANIFEST_LIMIT_BYTES)
        if content is None:
            return None
        media_type = declared or media.manifest_media_type(content)
        if media_type not in media.MANIFEST_TYPES:
            return None
        return digest, media_type, content

    async def _blob(self, request: web.Request, req: Request) -> web.StreamResponse:
        ref = req.ref
        assert ref.digest is not None
        try:
            blob = await self._store.open(ref.digest) if self._served(ref) else None
        except StoreUnavailable as err:
            log.warning("store unavailable", extra={"error": str(err)})
            blob = None
        self._count(ref, blob is not None)
        if blob is None:
            return error_response("BLOB_UNKNOWN", {"digest": ref.digest})
        try:
            try:
                byte_range = parse_range(request.headers.get("Range"), blob.size)
            except RangeNotSatisfiable as err:
                return error_response(
                    "RANGE_INVALID",
                    str(err),
                    headers={"Content-Range": f"bytes */{blob.size}"},
                )
            return await send_blob(request, blob, byte_range, head=req.head)
        finally:
            await blob.close()


def _ref_text(ref: Reference) -> str:
    return f"{ref.repository}{'@' + ref.digest if ref.digest else ':' + str(ref.tag)}"


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
