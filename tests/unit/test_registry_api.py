"""The registry API over a MemoryStore: routes, headers, ranges and errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from daemon.config import RegistryConfig
from daemon.registry.local import LocalContent
from daemon.registry.media import OCI_INDEX, OCI_MANIFEST
from daemon.registry.server import RegistryApi
from daemon.state.memory import MemoryStore
from daemon.values import parse_regexes

REGISTRY = "registry.example:5000"
LAYER = bytes(range(256)) * 40  # 10,240 bytes


class Node:
    """A registry API on 127.0.0.1 and a client session to it."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session

    def request(self, method: str, path: str, **kwargs: object) -> object:
        """Send `path` exactly as written (no client-side normalisation)."""
        url = URL(f"http://127.0.0.1:{self.server.port}{path}", encoded=True)
        return self.session.request(method, url, **kwargs)


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore()
    store.add_blob(LAYER)
    manifest = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
    store.add_image(f"{REGISTRY}/team/app:v1", OCI_MANIFEST, manifest)
    return store


async def start(store: MemoryStore, config: RegistryConfig) -> AsyncIterator[Node]:
    async def ready() -> bool:
        return True

    app = RegistryApi(LocalContent(config, store), ready).application()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Node(server, session)
    await server.close()


@pytest.fixture
async def node(store: MemoryStore) -> AsyncIterator[Node]:
    async for running in start(store, RegistryConfig()):
        yield running


def digest_of(content: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(content).hexdigest()


async def test_v2_answers_200(node: Node) -> None:
    async with node.request("GET", "/v2/") as response:
        assert response.status == 200
        assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


async def test_manifest_by_tag_and_digest(node: Node, store: MemoryStore) -> None:
    target = await store.resolve(f"{REGISTRY}/team/app:v1")
    assert target is not None
    for ref in ("v1", target.digest):
        path = f"/v2/team/app/manifests/{ref}?ns={REGISTRY}"
        async with node.request("GET", path) as response:
            body = await response.read()
            assert response.status == 200
            assert response.headers["Content-Type"] == OCI_MANIFEST
            assert response.headers["Docker-Content-Digest"] == target.digest
            assert int(response.headers["Content-Length"]) == len(body) == target.size
            assert digest_of(body) == target.digest
        async with node.request("HEAD", path) as head:
            assert head.status == 200
            assert await head.read() == b""
            for name in ("Content-Type", "Content-Length", "Docker-Content-Digest"):
                assert head.headers[name] == response.headers[name]


async def test_index_without_media_type_is_recognised(
    node: Node, store: MemoryStore
) -> None:
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    digest = store.add_blob(index)
    async with node.request(
        "GET", f"/v2/team/app/manifests/{digest}?ns=x.io"
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == OCI_INDEX


async def test_layer_requested_as_manifest_is_unknown(node: Node) -> None:
    path = f"/v2/team/app/manifests/{digest_of(LAYER)}?ns={REGISTRY}"
    async with node.request("GET", path) as response:
        assert response.status == 404
        body = await response.json()
        assert body["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_tag_needs_its_registry(node: Node) -> None:
    for path in ("/v2/team/app/manifests/v1", "/v2/team/app/manifests/v1?ns=other.io"):
        async with node.request("GET", path) as response:
            assert response.status == 404


async def test_blob_whole_and_head(node: Node) -> None:
    path = f"/v2/team/app/blobs/{digest_of(LAYER)}?ns={REGISTRY}"
    async with node.request("GET", path) as response:
        assert response.status == 200
        assert await response.read() == LAYER
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Length"] == str(len(LAYER))
        assert response.headers["Docker-Content-Digest"] == digest_of(LAYER)
        assert response.headers["Accept-Ranges"] == "bytes"
    async with node.request("HEAD", path) as head:
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(LAYER))
        assert await head.read() == b""


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=100-199", 100, 199),
        ("bytes=10000-", 10000, 10239),
        ("bytes=-40", 10200, 10239),
        ("bytes=10200-99999", 10200, 10239),
        ("bytes=-99999", 0, 10239),
    ],
)
async def test_blob_ranges(node: Node, header: str, first: int, last: int) -> None:
    path = f"/v2/team/app/blobs/{digest_of(LAYER)}"
    async with node.request("GET", path, headers={"Range": header}) as response:
        assert response.status == 206
        assert await response.read() == LAYER[first : last + 1]
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(LAYER)}"
        assert response.headers["Content-Length"] == str(last - first + 1)


@pytest.mark.parametrize(
    "header",
    ["bytes=10240-", "bytes=-0", "bytes=5-4", "bytes=0-1,5-6", "items=0-1", "bytes=x"],
)
async def test_unsatisfiable_ranges_are_416(node: Node, header: str) -> None:
    path = f"/v2/team/app/blobs/{digest_of(LAYER)}"
    async with node.request("GET", path, headers={"Range": header}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == f"bytes */{len(LAYER)}"
        assert (await response.json())["errors"][0]["code"] == "RANGE_INVALID"


async def test_missing_blob_is_blob_unknown(node: Node) -> None:
    path = "/v2/team/app/blobs/sha256:" + "0" * 64
    async with node.request("GET", path) as response:
        assert response.status == 404
        error = (await response.json())["errors"][0]
        assert error["code"] == "BLOB_UNKNOWN"
        assert set(error) == {"code", "message", "detail"}


@pytest.mark.parametrize(
    ("path", "code", "status"),
    [
        ("/v2/Team/app/manifests/v1", "NAME_INVALID", 400),
        ("/v2/team/app/manifests/-v1", "NAME_INVALID", 400),
        ("/v2/team/app/manifests/" + "a" * 129, "NAME_INVALID", 400),
        ("/v2/" + "a/" * 200 + "x/manifests/v1", "NAME_INVALID", 400),
        ("/v2/team/app/blobs/sha256:abc", "DIGEST_INVALID", 400),
        ("/v2/team/app/blobs/sha256:" + "A" * 64, "DIGEST_INVALID", 400),
        ("/v2/team/app/blobs/md5:" + "a" * 32, "DIGEST_INVALID", 400),
        ("/v2/team/app/blobs/latest", "DIGEST_INVALID", 400),
        ("/v2/team/%2e%2e/blobs/sha256:" + "0" * 64, "NAME_INVALID", 400),
        ("/v2/team/app/manifests/v1?ns=bad/ns", "NAME_INVALID", 400),
        ("/v2/team/app/manifests/v1?ns=a.io&ns=b.io", "NAME_INVALID", 400),
        ("/v2/_catalog", "UNSUPPORTED", 404),
        ("/v2/team/app/tags/list", "UNSUPPORTED", 404),
    ],
)
async def test_bad_requests_get_oci_errors(
    node: Node, path: str, code: str, status: int
) -> None:
    async with node.request("GET", path) as response:
        assert response.status == status
        assert (await response.json())["errors"][0]["code"] == code


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_other_methods_are_405(node: Node, method: str) -> None:
    async with node.request(method, "/v2/team/app/manifests/v1") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET, HEAD"
        assert (await response.json())["errors"][0]["code"] == "UNSUPPORTED"


async def test_unknown_method_token_is_refused_and_serving_goes_on(node: Node) -> None:
    # The HTTP parser refuses methods it does not know before any route runs.
    async with node.request("BREW", "/v2/team/app/manifests/v1") as response:
        assert 400 <= response.status < 500
    async with node.request("GET", "/v2/") as response:
        assert response.status == 200


async def test_filters_and_mirrored_registries(store: MemoryStore) -> None:
    config = replace(
        RegistryConfig(),
        mirrored_registries=(REGISTRY,),
        registry_filters=parse_regexes(":v1$"),
    )
    async for node in start(store, config):
        tag_path = f"/v2/team/app/manifests/v1?ns={REGISTRY}"
        async with node.request("GET", tag_path) as response:
            assert response.status == 404  # filtered by ":v1$"
        blob_path = f"/v2/team/app/blobs/{digest_of(LAYER)}"
        async with node.request("GET", blob_path + "?ns=other.io") as response:
            assert response.status == 404  # registry not mirrored
        async with node.request("GET", blob_path + f"?ns={REGISTRY}") as response:
            assert response.status == 200


async def test_health_endpoints(node: Node) -> None:
    for path in ("/readyz", "/livez"):
        async with node.request("GET", path) as response:
            assert response.status == 200


def test_docker_hub_names_are_normalised() -> None:
    from daemon.registry.reference import normalise_name, parse_registry

    assert parse_registry("registry-1.docker.io") == "docker.io"
    assert normalise_name("docker.io", "nginx") == "library/nginx"
    assert normalise_name("quay.io", "nginx") == "nginx"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/team/app/manifests/nosuchtag?ns=x.io",
        "/v2/team/app/blobs/sha256:" + "0" * 64,
        "/v2/team/app/blobs/sha256:bad",
    ],
)
async def test_head_errors_have_get_headers_and_no_body(node: Node, path: str) -> None:
    async with node.request("GET", path) as get:
        body = await get.read()
    async with node.request("HEAD", path) as head:
        assert head.status == get.status
        assert head.headers["Content-Type"] == get.headers["Content-Type"]
        assert head.headers["Content-Length"] == str(len(body))
        assert await head.read() == b""
