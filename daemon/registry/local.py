"""Answers to pull requests from local content only, independent of HTTP version.

The HTTP/1.1 API for containerd and the HTTP/3 server for peers both ask
`LocalContent.answer()`; each renders the Answer on its own wire. An
Answer is a status, the headers upstream registries send, and either a
small body (manifests, errors) or a part of a blob to stream.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from daemon.config import RegistryConfig
from daemon.observability.metrics import MIRROR_REQUESTS, registry_label
from daemon.registry import media
from daemon.registry.errors import ERROR_CONTENT_TYPE, STATUS_BY_CODE, error_body
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
from daemon.state.store import Blob, ContentStore, StoreUnavailable, read_small

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullRequest:
    """A parsed `/v2/<name>/<kind>/<reference>` request."""

    kind: str  # "manifests" or "blobs"
    ref: Reference
    head: bool
    range_header: str | None


@dataclass
class Answer:
    """Status, headers, and a small body or a blob part to stream.

    `missed` marks a request the node could serve but does not hold (the
    mirror path may take over); the owner closes the Answer once sent.
    """

    status: int
    headers: dict[str, str]
    body: bytes = b""
    blob: Blob | None = None
    first: int = 0
    length: int = 0
    missed: bool = False
    request: PullRequest | None = field(default=None, repr=False)

    async def close(self) -> None:
        if self.blob is not None:
            await self.blob.close()


def error_answer(
    code: str,
    detail: object = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """An OCI error as an Answer."""
    body = error_body(code, detail)
    return Answer(
        status or STATUS_BY_CODE[code],
        {
            "Content-Type": ERROR_CONTENT_TYPE,
            "Content-Length": str(len(body)),
            **(headers or {}),
        },
        body=body,
    )


def parse_pull(
    method: str, raw_path: str, namespaces: Sequence[str], range_header: str | None
) -> PullRequest | None:
    """Parse a pull request; None for a path that is not a pull endpoint."""
    if "%" in raw_path:
        raise ReferenceError("NAME_INVALID", "percent-encoded paths are not accepted")
    parts = raw_path.split("/")
    if len(parts) < 5 or parts[1] != "v2" or parts[-2] not in ("manifests", "blobs"):
        return None
    if len(namespaces) > 1:
        raise ReferenceError("NAME_INVALID", "more than one ns parameter")
    registry = parse_registry(namespaces[0] if namespaces else None)
    name = normalise_name(registry, parse_name("/".join(parts[2:-2])))
    kind, target = parts[-2], parts[-1]
    if kind == "blobs" or is_digest(target):
        ref = Reference(registry, name, digest=parse_digest(target))
    else:
        ref = Reference(registry, name, tag=parse_tag(target))
    return PullRequest(kind, ref, method == "HEAD", range_header)


def manifest_answer(digest: str, media_type: str, content: bytes) -> Answer:
    """A manifest with the headers upstream registries send."""
    return Answer(
        200,
        {
            "Content-Type": media_type,
            "Content-Length": str(len(content)),
            "Docker-Content-Digest": digest,
            "Etag": f'"{digest}"',
            "X-Content-Type-Options": "nosniff",
        },
        body=content,
    )


def blob_headers(
    digest: str, size: int, first: int, length: int, partial: bool
) -> dict[str, str]:
    """The headers upstream registries send with a blob or a range of it."""
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(length),
        "Docker-Content-Digest": digest,
        "Accept-Ranges": "bytes",
        "Etag": f'"{digest}"',
        "Cache-Control": "max-age=31536000",
        "X-Content-Type-Options": "nosniff",
    }
    if partial:
        headers["Content-Range"] = f"bytes {first}-{first + length - 1}/{size}"
    return headers


class LocalContent:
    """Answers pull requests from the node's own store, never forwarding."""

    def __init__(self, config: RegistryConfig, store: ContentStore) -> None:
        self._config = config
        self._store = store

    async def answer(
        self,
        method: str,
        raw_path: str,
        namespaces: Sequence[str],
        range_header: str | None,
    ) -> Answer:
        """The local answer to a GET or HEAD on a `/v2/` path."""
        if raw_path in ("/v2", "/v2/"):
            return Answer(200, {"Content-Type": "application/json"}, body=b"{}")
        try:
            request = parse_pull(method, raw_path, namespaces, range_header)
        except ReferenceError as err:
            return error_answer(err.code, str(err))
        if request is None:
            return error_answer("UNSUPPORTED", "not a pull endpoint", status=404)
        if request.kind == "manifests":
            answer = await self._manifest(request)
        else:
            answer = await self._blob(request)
        answer.request = request
        return answer

    def served(self, ref: Reference) -> bool:
        """Whether the registry is mirrored and the reference is not filtered."""
        if ref.registry is not None and not self._config.mirrors(ref.registry):
            return False
        key = ref.tag_key if ref.tag is not None else ref.repository
        return not self._config.filtered(key)

    async def _manifest(self, request: PullRequest) -> Answer:
        ref = request.ref
        found = None
        if self.served(ref):
            try:
                found = await self._find_manifest(ref)
            except StoreUnavailable as err:
                log.warning("store unavailable", extra={"error": str(err)})
        if found is None:
            answer = error_answer("MANIFEST_UNKNOWN", {"ref": _ref_text(ref)})
            answer.missed = self.served(ref)
            return answer
        return manifest_answer(*found)

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

    async def _blob(self, request: PullRequest) -> Answer:
        ref = request.ref
        assert ref.digest is not None
        blob = None
        if self.served(ref):
            try:
                blob = await self._store.open(ref.digest)
            except StoreUnavailable as err:
                log.warning("store unavailable", extra={"error": str(err)})
        if blob is None:
            answer = error_answer("BLOB_UNKNOWN", {"digest": ref.digest})
            answer.missed = self.served(ref)
            return answer
        try:
            byte_range = parse_range(request.range_header, blob.size)
        except RangeNotSatisfiable as err:
            await blob.close()
            return error_answer(
                "RANGE_INVALID",
                str(err),
                headers={"Content-Range": f"bytes */{blob.size}"},
            )
        first = 0 if byte_range is None else byte_range.first
        length = blob.size if byte_range is None else byte_range.length
        headers = blob_headers(
            blob.digest, blob.size, first, length, byte_range is not None
        )
        status = 200 if byte_range is None else 206
        return Answer(status, headers, blob=blob, first=first, length=length)


def count_request(ref: Reference, hit: bool, source: str) -> None:
    """Count one pull request by registry, outcome and where it was looked up."""
    MIRROR_REQUESTS.labels(
        registry=registry_label(ref.registry),
        cache="hit" if hit else "miss",
        source=source,
    ).inc()


def _ref_text(ref: Reference) -> str:
    return f"{ref.repository}{'@' + ref.digest if ref.digest else ':' + str(ref.tag)}"
