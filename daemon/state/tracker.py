"""The state tracker: keeps the router's advertisements equal to containerd's content.

A snapshot followed by a stream of events: subscribe to containerd's
events, walk every image and advertise what is local, then advertise and
withdraw as events arrive. Every refresh interval the full walk runs again
and withdraws what vanished without an event (containerd 1.6's garbage
collector deletes blobs silently). A broken event stream (containerd
restarted) is reopened with backoff and followed by a fresh walk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from daemon.observability.metrics import (
    ADVERTISE_LATENCY,
    ADVERTISED_IMAGES,
    ADVERTISED_KEYS,
)
from daemon.routing.router import Router
from daemon.state.containerd import (
    BlobCommitted,
    BlobDeleted,
    ContainerdClient,
    ContainerdError,
    ContainerdEvent,
    Descriptor,
    ImageCreated,
    ImageDeleted,
    ImageUpdated,
)
from daemon.state.images import parse_image_name, walk_image
from daemon.state.store import ContentStore, StoreUnavailable

if TYPE_CHECKING:
    from ebpf.watcher import ContentWatcher

log = logging.getLogger(__name__)

EVENT_FILTERS = (
    'topic~="^/images/"',
    'topic=="/content/delete"',
    'topic=="/content/create"',
)
BACKOFF_FIRST_S = 0.5
# containerd collects an image's blobs shortly after the image is deleted.
GC_SETTLE_S = 1.0
BACKOFF_MAX_S = 10.0

KeyFilter = Callable[[str], bool]


class StateTracker:
    """Advertises every local digest and tag key; withdraws what disappears.

    `serves(registry, key)` says whether a registry is mirrored and a key
    (`registry/repo` or `registry/repo:tag`) passes the filters.
    """

    def __init__(
        self,
        client: ContainerdClient,
        store: ContentStore,
        router: Router,
        serves: Callable[[str, str], bool],
        refresh_interval_s: float,
        unrestricted: bool,
    ) -> None:
        self._client = client
        self._store = store
        self._router = router
        self._serves = serves
        self._refresh_interval_s = refresh_interval_s
        self._unrestricted = unrestricted
        self._advertised: set[str] = set()
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()
        self.walks = 0

    @property
    def advertised(self) -> frozenset[str]:
        """The keys currently advertised."""
        return frozenset(self._advertised)

    async def run(self) -> None:
        """Follow containerd forever: walk, then events, reconnecting as needed."""
        refresher = asyncio.create_task(self._refresh_forever())
        try:
            await self._follow_events()
        finally:
            tasks = [refresher, *self._pending]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def sync(self) -> None:
        """One full walk: advertise what is held, withdraw what is gone."""
        async with self._lock:
            keys, images = await self._snapshot()
            gone = self._advertised - keys
            if gone:
                await self._router.withdraw(gone)
            await self._router.advertise(keys)
            self._advertised = keys
            self.walks += 1
        _publish_gauges(keys, images)
        log.info(
            "advertised",
            extra={
                "keys": len(keys),
                "withdrawn": len(gone),
                "images": sum(images.values()),
            },
        )

    async def follow(self, watcher: ContentWatcher) -> None:
        """Advertise and withdraw blobs as the watcher sees them; ends with it.

        A commit is advertised only when unrestricted: a bare blob cannot be
        attributed to a registry, so filtered nodes wait for the image event.
        """
        async for event in watcher:
            fresh = event.digest not in self._advertised
            await self._handle(event)
            seen_ns = getattr(event, "seen_ns", None)
            advertised = event.digest in self._advertised
            if isinstance(event, BlobCommitted) and fresh and advertised and seen_ns:
                ADVERTISE_LATENCY.observe((time.monotonic_ns() - seen_ns) / 1e9)

    async def _snapshot(self) -> tuple[set[str], Counter[str]]:
        keys: set[str] = set()
        images: Counter[str] = Counter()
        for image in await self._client.list_images():
            image_keys = await self._image_keys(image.name, image.target)
            if image_keys:
                keys |= image_keys
                name = parse_image_name(image.name)
                images[name.registry if name else "none"] += 1
        return keys, images

    async def _image_keys(self, name: str, target: Descriptor) -> set[str]:
        parsed = parse_image_name(name)
        if parsed is None:
            return set()
        subject = f"{parsed.registry}/{parsed.repository}"
        if not self._serves(parsed.registry, subject):
            return set()
        keys = await walk_image(self._store, target)
        tag_key = parsed.tag_key
        if tag_key and keys and self._serves(parsed.registry, tag_key):
            keys.add(tag_key)
        return keys

    def _later(self, delay_s: float, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` after a delay, in the background, logging its failure."""

        async def run() -> None:
            await asyncio.sleep(delay_s)
            try:
                await action()
            except (ContainerdError, StoreUnavailable) as err:
                log.warning("delayed walk failed", extra={"error": str(err)})

        task = asyncio.create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval_s)
            try:
                await self.sync()
            except (ContainerdError, StoreUnavailable) as err:
                log.warning("refresh failed", extra={"error": str(err)})

    async def _follow_events(self) -> None:
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                events = self._client.subscribe(EVENT_FILTERS)
                # Subscribe before the walk so nothing between them is lost.
                first = asyncio.ensure_future(anext(events))
                await asyncio.sleep(0)
                await self.sync()
                backoff = BACKOFF_FIRST_S
                await self._handle(await first)
                async for event in events:
                    await self._handle(event)
                log.warning("containerd event stream ended")
            except (ContainerdError, StoreUnavailable, StopAsyncIteration) as err:
                log.warning("containerd event stream broken", extra={"error": str(err)})
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def _handle(self, event: ContainerdEvent) -> None:
        """Advertise or withdraw for one event."""
        if isinstance(event, ImageCreated | ImageUpdated):
            image = await self._client.get_image(event.name)
            if image is None:
                return
            keys = await self._image_keys(image.name, image.target)
            async with self._lock:
                new = keys - self._advertised
                self._advertised |= keys
            if new:
                await self._router.advertise(new)
        elif isinstance(event, ImageDeleted):
            # Its digests may be shared with other images: let a walk decide,
            # now for the tag and again once the garbage collector has run.
            await self.sync()
            self._later(GC_SETTLE_S, self.sync)
        elif isinstance(event, BlobDeleted):
            async with self._lock:
                held = event.digest in self._advertised
                self._advertised.discard(event.digest)
            if held:
                await self._router.withdraw([event.digest])
        elif isinstance(event, BlobCommitted) and self._unrestricted:
            async with self._lock:
                unseen = event.digest not in self._advertised
                self._advertised.add(event.digest)
            if unseen:
                await self._router.advertise([event.digest])
        log.debug("event", extra={"event": type(event).__name__})


def _publish_gauges(keys: set[str], images: Counter[str]) -> None:
    tags = sum(1 for key in keys if "/" in key)  # tag keys name a repository
    ADVERTISED_KEYS.labels(kind="tag").set(tags)
    ADVERTISED_KEYS.labels(kind="digest").set(len(keys) - tags)
    ADVERTISED_IMAGES.clear()
    for registry, count in images.items():
        ADVERTISED_IMAGES.labels(registry=registry).set(count)
