"""ContainerdClient against a real private containerd, and against dead sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import socket
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from daemon.state.containerd import (
    BlobDeleted,
    ContainerdClient,
    ContainerdError,
    ContainerdEvent,
    ContainerdNotFound,
    ContainerdUnavailable,
    Descriptor,
    Image,
    ImageCreated,
    ImageDeleted,
    ImageUpdated,
)
from tests.support.containerd import ContainerdProcess

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
EVENT_WAIT_S = 10.0


def sha256(data: bytes) -> str:
    """The OCI digest string of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(name: str, payload: bytes) -> tuple[bytes, dict[str, Descriptor]]:
    """A one-layer OCI image archive for `ctr images import`, and its blobs."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer = layer_tar.getvalue()

    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": OCI_LAYER, "digest": sha256(layer), "size": len(layer)}
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha256(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    ).encode()

    blobs = {"manifest": (OCI_MANIFEST, manifest)}
    blobs |= {"config": (OCI_CONFIG, config), "layer": (OCI_LAYER, layer)}
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for _, data in blobs.values():
        files[f"blobs/sha256/{sha256(data)[7:]}"] = data

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    descriptors = {
        role: Descriptor(media_type, sha256(data), len(data))
        for role, (media_type, data) in blobs.items()
    }
    return archive.getvalue(), descriptors


def import_image(
    containerd: ContainerdProcess,
    tmp_path: Path,
    name: str,
    namespace: str | None = None,
) -> dict[str, Descriptor]:
    """Import a fresh tiny image named `name`; return its blobs' descriptors."""
    archive, descriptors = oci_archive(name, os.urandom(64))
    path = tmp_path / f"{descriptors['manifest'].digest[7:19]}.tar"
    path.write_bytes(archive)
    args = ("images", "import", "--no-unpack", "--all-platforms", str(path))
    containerd.ctr(*args, namespace=namespace)
    return descriptors


def ingest_random(containerd: ContainerdProcess, size: int) -> tuple[str, bytes]:
    """Ingest `size` random bytes as a loose blob; return its digest and bytes."""
    data = os.urandom(size)
    digest = sha256(data)
    containerd.ingest(data, ref=f"test-{digest[7:19]}", digest=digest)
    return digest, data


@pytest.fixture
async def client(containerd: ContainerdProcess) -> AsyncIterator[ContainerdClient]:
    """A client connected to the private containerd."""
    client = ContainerdClient(str(containerd.socket), containerd.namespace)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


async def test_connect_returns_server_version(
    containerd: ContainerdProcess, client: ContainerdClient
) -> None:
    reported = containerd.ctr("version").stdout

    version = await client.version()

    assert version.startswith("1.6.")
    assert f"Version:  {version}" in reported


async def test_get_image_returns_none_for_unknown_name(
    client: ContainerdClient,
) -> None:
    assert await client.get_image("example.test/nothing/here:v1") is None


async def test_content_info_and_list_show_an_ingested_blob(
    containerd: ContainerdProcess, client: ContainerdClient
) -> None:
    digest, data = await asyncio.to_thread(ingest_random, containerd, 4096)

    info = await client.content_info(digest)
    listed = await client.list_content()
    filtered = await client.list_content([f"digest=={digest}"])

    assert info is not None
    assert (info.digest, info.size) == (digest, len(data))
    assert digest in {item.digest for item in listed}
    assert [item.digest for item in filtered] == [digest]


async def test_content_info_returns_none_for_unknown_digest(
    client: ContainerdClient,
) -> None:
    assert await client.content_info(sha256(b"never stored")) is None


async def test_read_content_streams_whole_blob_in_chunks(
    containerd: ContainerdProcess, client: ContainerdClient
) -> None:
    size = 3 * 1024 * 1024 + 17
    digest, data = await asyncio.to_thread(ingest_random, containerd, size)

    chunks = [chunk async for chunk in client.read_content(digest)]

    assert b"".join(chunks) == data
    assert len(chunks) > 1


async def test_read_content_honours_offset_and_size(
    containerd: ContainerdProcess, client: ContainerdClient
) -> None:
    digest, data = await asyncio.to_thread(ingest_random, containerd, 2 * 1024 * 1024)
    offset = 1024 * 1024 + 3

    tail = b"".join([c async for c in client.read_content(digest, offset=offset)])
    middle = b"".join([c async for c in client.read_content(digest, 100, 5000)])

    assert tail == data[offset:]
    assert middle == data[100:5100]


async def test_read_content_raises_not_found_for_unknown_digest(
    client: ContainerdClient,
) -> None:
    with pytest.raises(ContainerdNotFound) as caught:
        async for _ in client.read_content(sha256(b"never stored")):
            pass

    assert caught.value.__cause__ is not None


async def test_imported_image_is_listed_and_resolvable(
    containerd: ContainerdProcess, client: ContainerdClient, tmp_path: Path
) -> None:
    name = "example.test/peerpull/tiny:v1"
    blobs = await asyncio.to_thread(import_image, containerd, tmp_path, name)

    image = await client.get_image(name)
    everything = await client.list_images()
    filtered = await client.list_images([f"name=={name}"])
    config = await client.content_info(blobs["config"].digest)

    assert image == Image(name=name, target=blobs["manifest"])
    assert image in everything
    assert filtered == [image]
    assert config is not None and config.size == blobs["config"].size


async def test_content_root_is_the_private_content_dir(
    containerd: ContainerdProcess, client: ContainerdClient
) -> None:
    assert await client.content_root() == str(containerd.content_path)


async def test_subscribe_sees_image_and_blob_events_of_its_namespace(
    containerd: ContainerdProcess, client: ContainerdClient, tmp_path: Path
) -> None:
    events: asyncio.Queue[ContainerdEvent] = asyncio.Queue()

    async def collect() -> None:
        async for event in client.subscribe():
            events.put_nowait(event)

    collector = asyncio.create_task(collect())
    try:
        await wait_until_subscribed(containerd, events)
        name = "example.test/peerpull/events:v1"

        elsewhere = "example.test/peerpull/elsewhere:v1"
        await asyncio.to_thread(
            import_image, containerd, tmp_path, elsewhere, namespace="elsewhere"
        )
        await asyncio.to_thread(import_image, containerd, tmp_path, name)
        created = await next_event(events)
        blobs = await asyncio.to_thread(import_image, containerd, tmp_path, name)
        updated = await next_event(events)
        # content first: removing the image lets GC take its blobs silently
        layer = blobs["layer"].digest
        await asyncio.to_thread(containerd.ctr, "content", "rm", layer)
        blob_deleted = await next_event(events)
        await asyncio.to_thread(containerd.ctr, "images", "rm", name)
        deleted = await next_event(events)
    finally:
        collector.cancel()
        with pytest.raises(asyncio.CancelledError):
            await collector

    assert created == ImageCreated(name)
    assert updated == ImageUpdated(name)
    assert deleted == ImageDeleted(name)
    assert blob_deleted == BlobDeleted(layer)


async def wait_until_subscribed(
    containerd: ContainerdProcess, events: asyncio.Queue[ContainerdEvent]
) -> None:
    """Delete marker blobs until one's event arrives, then drain the queue.

    Subscribe gives no signal that the server side is registered, so a marker
    event is the only proof that later events will be seen.
    """
    deadline = time.monotonic() + EVENT_WAIT_S
    while time.monotonic() < deadline:
        digest, _ = await asyncio.to_thread(ingest_random, containerd, 16)
        await asyncio.to_thread(containerd.ctr, "content", "rm", digest)
        try:
            event = await asyncio.wait_for(events.get(), timeout=0.5)
        except TimeoutError:
            continue
        if event == BlobDeleted(digest):
            await asyncio.sleep(0.2)
            while not events.empty():
                events.get_nowait()
            return
    pytest.fail("the event subscription never delivered a marker event")


async def next_event(events: asyncio.Queue[ContainerdEvent]) -> ContainerdEvent:
    """The next event, or a test failure after EVENT_WAIT_S."""
    try:
        return await asyncio.wait_for(events.get(), timeout=EVENT_WAIT_S)
    except TimeoutError:
        pytest.fail(f"no containerd event within {EVENT_WAIT_S}s")


async def test_calls_before_connect_raise_containerd_error(tmp_path: Path) -> None:
    client = ContainerdClient(str(tmp_path / "containerd.sock"), "k8s.io")

    with pytest.raises(ContainerdError, match="not connected"):
        await client.list_images()


async def test_connect_to_missing_socket_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    client = ContainerdClient(str(path), "k8s.io")

    with pytest.raises(ContainerdUnavailable) as caught:
        await client.connect(timeout_s=1.0)

    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_connect_to_dead_socket_is_unavailable_at_once(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    with dead_socket(path):
        client = ContainerdClient(str(path), "k8s.io")
        started = time.monotonic()

        with pytest.raises(ContainerdUnavailable) as caught:
            await client.connect(timeout_s=5.0)

    assert time.monotonic() - started < 5.0
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is not None


async def test_connect_to_silent_socket_is_bounded_by_timeout(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with silent_socket(path):
        client = ContainerdClient(str(path), "k8s.io")
        started = time.monotonic()

        with pytest.raises(ContainerdUnavailable) as caught:
            await client.connect(timeout_s=0.5)

    assert time.monotonic() - started < 3.0
    assert str(path) in str(caught.value)


@contextlib.contextmanager
def dead_socket(path: Path) -> Iterator[Path]:
    """A unix socket file that nobody listens on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def silent_socket(path: Path) -> Iterator[Path]:
    """A unix socket that takes connections (in its backlog) and never answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(16)
        yield path
    finally:
        sock.close()
        path.unlink(missing_ok=True)
