"""The mirror path over a MemoryRouter and MemoryPeerClient, with injected faults.

Node under test holds nothing; its peers are LocalContent over MemoryStores.
Faults wrap a peer's body stream: corrupt bytes, a cut, extra bytes, a peer
that is down. Real QUIC peers have their own component tests.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp.test_utils import TestServer

from daemon.config import RegistryConfig
from daemon.registry.local import LocalContent
from daemon.registry.media import OCI_MANIFEST
from daemon.registry.mirror import PeerMirror
from daemon.registry.server import RegistryApi
from daemon.routing.router import MemoryNetwork, MemoryRouter, Peer
from daemon.state.memory import MemoryStore
from transport.memory import MemoryPeerClient, MemoryPeerResponse
from transport.peer import PeerStreamBroken

REGISTRY = "registry.example"
BLOB = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
TAG = f"{REGISTRY}/team/app:v1"


class FaultyResponse(MemoryPeerResponse):
    """A peer response whose body goes wrong in one of several ways."""

    fault = ""

    async def _faulty(self) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in super()._body():
            if self.fault == "cut" and sent + len(chunk) > 300_000:
                yield chunk[: 300_000 - sent]
                raise PeerStreamBroken("reset mid-body")
            if self.fault == "corrupt" and sent <= 500_000 < sent + len(chunk):
                index = 500_000 - sent
                chunk = (
                    chunk[:index] + bytes([chunk[index] ^ 0xFF]) + chunk[index + 1 :]
                )
            sent += len(chunk)
            yield chunk
        if self.fault == "long":
            yield b"extra"

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._faulty()


class FaultyClient(MemoryPeerClient):
    def __init__(
        self, peers: Mapping[str, LocalContent], faults: dict[str, str]
    ) -> None:
        super().__init__(peers)
        self.faults = faults

    async def fetch(
        self, peer_id: str, *args: object, **kwargs: object
    ) -> MemoryPeerResponse:
        response = await super().fetch(peer_id, *args, **kwargs)  # type: ignore[arg-type]
        response.__class__ = FaultyResponse
        response.fault = self.faults.get(peer_id, "")  # type: ignore[attr-defined]
        return response


def holder() -> LocalContent:
    store = MemoryStore()
    store.add_blob(BLOB)
    store.add_image(TAG, OCI_MANIFEST, MANIFEST)
    return LocalContent(RegistryConfig(), store)


class Scene:
    def __init__(
        self, server: TestServer, client: FaultyClient, session: aiohttp.ClientSession
    ) -> None:
        self.server = server
        self.client = client
        self.session = session

    def get(self, path: str, method: str = "GET", **headers: str) -> object:
        url = f"http://127.0.0.1:{self.server.port}{path}?ns={REGISTRY}"
        return self.session.request(method, url, headers=headers)


async def build(
    holders: dict[str, str], resolve_tags: bool = True, unheld: tuple[str, ...] = ()
) -> AsyncIterator[Scene]:
    """Peers named in `holders` (peer id -> fault) hold the content."""
    network = MemoryNetwork()
    me = MemoryRouter(network, Peer("me", "127.0.1.1"))
    contents = {}
    for index, peer_id in enumerate([*holders, *unheld]):
        peer = MemoryRouter(network, Peer(peer_id, f"127.0.1.{index + 2}"))
        await peer.advertise(
            [DIGEST, TAG, "sha256:" + hashlib.sha256(MANIFEST).hexdigest()]
        )
        if peer_id in holders:
            contents[peer_id] = holder()
    client = FaultyClient(contents, {p: f for p, f in holders.items() if f})
    mirror = PeerMirror(
        me, client, resolve_timeout_s=0.02, resolve_retries=3, resolve_tags=resolve_tags
    )

    async def ready() -> bool:
        return True

    api = RegistryApi(LocalContent(RegistryConfig(), MemoryStore()), ready, mirror)
    server = TestServer(api.application(), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Scene(server, client, session)
    await server.close()


async def fetch(
    scene: Scene, path: str, method: str = "GET", **headers: str
) -> tuple[int, Mapping[str, str], bytes | None]:
    async with scene.get(path, method, **headers) as response:  # type: ignore[attr-defined]
        try:
            body: bytes | None = await response.read()
        except aiohttp.ClientPayloadError:
            body = None  # cut before the end: the client knows it is incomplete
        return response.status, response.headers, body


async def test_blob_streams_from_a_peer_with_its_headers() -> None:
    async for scene in build({"p1": ""}):
        status, headers, body = await fetch(scene, f"/v2/team/app/blobs/{DIGEST}")
        assert (status, body) == (200, BLOB)
        assert headers["Docker-Content-Digest"] == DIGEST
        assert headers["Content-Length"] == str(len(BLOB))
        sent = scene.client.requests[0]
        assert sent[3]["x-peerpull-mirrored"] == "true"


async def test_corrupt_bytes_never_reach_the_client_and_the_peer_is_avoided() -> None:
    async for scene in build({"bad": "corrupt", "good": ""}):
        # MemoryRouter answers in advertisement order: "bad" is tried first,
        # fails the digest check in the spool, and "good" serves the blob.
        results = [await fetch(scene, f"/v2/team/app/blobs/{DIGEST}") for _ in range(2)]
        assert [(status, body) for status, _, body in results] == [(200, BLOB)] * 2
        tried = [request[0] for request in scene.client.requests]
        assert tried == ["bad", "good", "good"]


async def test_only_corrupt_peers_is_a_clean_404() -> None:
    async for scene in build({"bad": "corrupt"}):
        status, _, body = await fetch(scene, f"/v2/team/app/blobs/{DIGEST}")
        assert status == 404
        assert json.loads(body or b"")["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_a_cut_stream_resumes_from_another_peer_with_range() -> None:
    async for scene in build({"cutter": "cut", "whole": ""}):
        status, _, body = await fetch(scene, f"/v2/team/app/blobs/{DIGEST}")
        assert (status, body) == (200, BLOB)
        (first, resumed) = scene.client.requests
        assert first[0] == "cutter" and "range" not in first[3]
        assert resumed[0] == "whole"
        assert resumed[3]["range"] == f"bytes=300000-{len(BLOB) - 1}"


async def test_extra_bytes_are_a_broken_stream() -> None:
    async for scene in build({"long": "long"}):
        status, _, body = await fetch(scene, f"/v2/team/app/blobs/{DIGEST}")
        assert status == 404  # the only peer broke: nothing unverified goes out


async def test_no_peer_is_a_fast_404() -> None:
    async for scene in build({}):
        started = time.monotonic()
        status, headers, body = await fetch(scene, f"/v2/team/app/blobs/{DIGEST}")
        assert (
            status == 404
            and json.loads(body or b"")["errors"][0]["code"] == "BLOB_UNKNOWN"
        )
        assert time.monotonic() - started < 0.5


async def test_peers_down_before_headers_fall_through_to_404() -> None:
    async for scene in build({}, unheld=("gone1", "gone2")):
        status, _, _ = await fetch(scene, f"/v2/team/app/blobs/{DIGEST}")
        assert status == 404
        assert {r[0] for r in scene.client.requests} == {"gone1", "gone2"}


async def test_tags_resolve_through_peers_unless_disabled() -> None:
    async for scene in build({"p1": ""}):
        status, headers, body = await fetch(scene, "/v2/team/app/manifests/v1")
        assert (status, body) == (200, MANIFEST)
        assert headers["Content-Type"] == OCI_MANIFEST
    async for scene in build({"p1": ""}, resolve_tags=False):
        status, _, _ = await fetch(scene, "/v2/team/app/manifests/v1")
        assert status == 404
        assert scene.client.requests == []


async def test_head_and_range_through_a_peer() -> None:
    async for scene in build({"p1": ""}):
        status, headers, body = await fetch(
            scene, f"/v2/team/app/blobs/{DIGEST}", "HEAD"
        )
        assert (status, body) == (200, b"")
        assert headers["Content-Length"] == str(len(BLOB))
        status, headers, body = await fetch(
            scene, f"/v2/team/app/blobs/{DIGEST}", Range="bytes=100-199"
        )
        assert (status, body) == (206, BLOB[100:200])
        assert headers["Content-Range"] == f"bytes 100-199/{len(BLOB)}"


async def test_requests_from_peers_are_never_forwarded() -> None:
    async for scene in build({"p1": ""}):
        status, _, _ = await fetch(
            scene, f"/v2/team/app/blobs/{DIGEST}", **{"X-PeerPull-Mirrored": "true"}
        )
        assert status == 404 and scene.client.requests == []
