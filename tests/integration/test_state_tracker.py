"""The state tracker against a real containerd: pulls advertise, deletions withdraw.

The router is a MemoryRouter, so what is asserted is exactly what the
tracker asked to advertise; the DHT itself has its own component tests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from daemon.routing.router import MemoryNetwork, MemoryRouter, Peer
from daemon.state.containerd import ContainerdClient
from daemon.state.store import ContainerdStore
from daemon.state.tracker import StateTracker
from tests.support.containerd import ContainerdProcess
from tests.support.fixtures_upstream import ImageFactory
from tests.support.upstream import UpstreamRegistry

pytestmark = pytest.mark.integration


class Tracked:
    def __init__(self, tracker: StateTracker, router: MemoryRouter) -> None:
        self.tracker = tracker
        self.router = router

    async def until(
        self, condition: Callable[[set[str]], bool], timeout_s: float = 10
    ) -> None:
        """Wait until the advertised keys satisfy `condition`."""
        async with asyncio.timeout(timeout_s):
            while not condition(self.router.advertised):
                await asyncio.sleep(0.05)


async def start_tracker(
    containerd: ContainerdProcess,
    serves: Callable[[str, str], bool] = lambda registry, key: True,
    refresh_s: float = 600,
) -> AsyncIterator[Tracked]:
    client = ContainerdClient(str(containerd.socket), containerd.namespace)
    await client.connect()
    store = ContainerdStore(client, containerd.content_path)
    router = MemoryRouter(MemoryNetwork(), Peer("me", "127.0.1.1"))
    tracker = StateTracker(client, store, router, serves, refresh_s, unrestricted=True)
    task = asyncio.create_task(tracker.run())
    try:
        async with asyncio.timeout(10):
            while tracker.walks == 0:
                await asyncio.sleep(0.02)
        yield Tracked(tracker, router)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


@pytest.fixture
async def tracked(containerd: ContainerdProcess) -> AsyncIterator[Tracked]:
    async for running in start_tracker(containerd):
        yield running


async def test_pulled_images_are_advertised_with_their_tags(
    tracked: Tracked,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
) -> None:
    single = image_factory((3000, 4000), seed=31)
    multi = image_factory((2000,), platforms=("linux/amd64", "linux/arm64"), seed=32)
    await asyncio.to_thread(containerd.pull, upstream.push(single, "t/single", "v1"))
    await asyncio.to_thread(containerd.pull, upstream.push(multi, "t/multi", "v2"))

    host = upstream.host
    expected = {blob.digest for blob in single.all_blobs()} | {
        multi.root.digest,
        multi.manifests[0].digest,
        multi.configs[0].digest,
        multi.layers[0].digest,
        f"{host}/t/single:v1",
        f"{host}/t/multi:v2",
    }
    await tracked.until(lambda keys: expected <= keys)
    foreign = {
        multi.manifests[1].digest,
        multi.configs[1].digest,
        multi.layers[1].digest,
    }
    assert not foreign & tracked.router.advertised  # other platforms are not local


async def test_deleted_images_and_blobs_are_withdrawn(
    tracked: Tracked,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
) -> None:
    keep = image_factory((1000,), seed=33)
    drop = image_factory((1500, 2500), seed=34)
    keep_ref = upstream.push(keep, "t/keep", "v1")
    drop_ref = upstream.push(drop, "t/drop", "v1")
    await asyncio.to_thread(containerd.pull, keep_ref)
    await asyncio.to_thread(containerd.pull, drop_ref)
    drop_keys = {blob.digest for blob in drop.all_blobs()} | {drop_ref}
    await tracked.until(lambda keys: drop_keys <= keys)

    # image delete: the tag at once, the blobs once containerd's GC has run
    await asyncio.to_thread(containerd.ctr, "images", "rm", drop_ref)
    await tracked.until(lambda keys: not drop_keys & keys)
    assert keep_ref in tracked.router.advertised

    # an explicit content delete withdraws that digest
    layer = keep.layers[0].digest
    await asyncio.to_thread(containerd.ctr, "content", "rm", layer)
    await tracked.until(lambda keys: layer not in keys)


async def test_refresh_withdraws_content_that_vanished_without_an_event(
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
) -> None:
    image = image_factory((1200,), seed=35)
    await asyncio.to_thread(containerd.pull, upstream.push(image, "t/gc", "v1"))
    layer = image.layers[0].digest
    async for tracked in start_tracker(containerd, refresh_s=0.3):
        await tracked.until(lambda keys: layer in keys)
        # what a silent deletion leaves behind: metadata says held, no file
        os.unlink(containerd.content_path / "blobs" / "sha256" / layer[7:])
        await tracked.until(lambda keys: layer not in keys)


async def test_filters_and_unmirrored_registries_are_not_advertised(
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
) -> None:
    image = image_factory((1300,), seed=36)
    ref = upstream.push(image, "t/filtered", "latest")
    await asyncio.to_thread(containerd.pull, ref)

    def serves(registry: str, key: str) -> bool:
        return not key.endswith(":latest")

    digests = {blob.digest for blob in image.all_blobs()}
    async for tracked in start_tracker(containerd, serves=serves):
        await tracked.until(lambda keys: digests <= keys)
        assert ref not in tracked.router.advertised

    async for tracked in start_tracker(containerd, serves=lambda registry, key: False):
        assert not tracked.router.advertised


async def test_containerd_restart_reconnects_and_rewalks(
    tracked: Tracked,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
    tmp_path: Path,
) -> None:
    walks = tracked.tracker.walks
    await asyncio.to_thread(containerd.stop)
    await asyncio.to_thread(containerd.start)
    image = image_factory((1400,), seed=37)
    ref = upstream.push(image, "t/after", "v1")
    await asyncio.to_thread(containerd.pull, ref)
    await tracked.until(lambda keys: ref in keys, timeout_s=30)
    assert tracked.tracker.walks > walks
