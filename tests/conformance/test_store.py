"""One conformance suite for every ContentStore: memory, containerd by file, by gRPC."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.registry.media import OCI_MANIFEST
from daemon.state.containerd import ContainerdClient
from daemon.state.memory import MemoryStore
from daemon.state.store import ContainerdStore, ContentStore, read_small
from tests.support.containerd import ContainerdProcess
from tests.support.fixtures_upstream import ImageFactory
from tests.support.upstream import UpstreamRegistry

LAYER_SIZE = 3 * 1024 * 1024 + 17  # spans several read chunks


@dataclass
class Held:
    store: ContentStore
    layer: bytes
    layer_digest: str
    image_name: str
    manifest_digest: str


@pytest.fixture(params=["memory", "file", "grpc"])
async def held(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Held]:
    if request.param == "memory":
        store = MemoryStore()
        layer = bytes(range(256)) * (LAYER_SIZE // 256) + b"x" * (LAYER_SIZE % 256)
        digest = store.add_blob(layer)
        manifest = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
        target = store.add_image("example.io/t/app:v1", OCI_MANIFEST, manifest)
        yield Held(store, layer, digest, "example.io/t/app:v1", target.digest)
        return

    containerd: ContainerdProcess = request.getfixturevalue("containerd")
    upstream: UpstreamRegistry = request.getfixturevalue("upstream")
    factory: ImageFactory = request.getfixturevalue("image_factory")
    image = factory((LAYER_SIZE,), seed=41)
    name = upstream.push(image, "t/app", "v1")
    containerd.pull(name)
    client = ContainerdClient(str(containerd.socket), containerd.namespace)
    await client.connect()
    path = containerd.content_path if request.param == "file" else None
    layer = image.layers[0].path.read_bytes()
    try:
        yield Held(
            ContainerdStore(client, path),
            layer,
            image.layers[0].digest,
            name,
            image.root.digest,
        )
    finally:
        await client.close()


async def test_size_of_held_and_missing(held: Held) -> None:
    assert await held.store.size(held.layer_digest) == len(held.layer)
    assert await held.store.size("sha256:" + "0" * 64) is None


async def test_whole_blob_streams_exactly(held: Held) -> None:
    blob = await held.store.open(held.layer_digest)
    assert blob is not None and blob.size == len(held.layer)
    try:
        assert b"".join([chunk async for chunk in blob.chunks()]) == held.layer
    finally:
        await blob.close()
        await blob.close()  # idempotent


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 1), (1, 1_048_576), (LAYER_SIZE - 5, 5)]
)
async def test_parts_stream_exactly(held: Held, offset: int, length: int) -> None:
    blob = await held.store.open(held.layer_digest)
    assert blob is not None
    try:
        part = b"".join([chunk async for chunk in blob.chunks(offset, length)])
    finally:
        await blob.close()
    assert part == held.layer[offset : offset + length]


async def test_missing_blob_opens_as_none(held: Held) -> None:
    assert await held.store.open("sha256:" + "1" * 64) is None


async def test_resolve_names_to_their_manifest(held: Held) -> None:
    target = await held.store.resolve(held.image_name)
    assert target is not None and target.digest == held.manifest_digest
    assert await held.store.resolve(held.image_name + "-nope") is None


async def test_read_small_respects_its_limit(held: Held) -> None:
    assert await read_small(held.store, held.layer_digest, 100) is None
    whole = await read_small(held.store, held.layer_digest, len(held.layer))
    assert whole == held.layer
