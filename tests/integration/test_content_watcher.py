"""Content watchers against a real containerd: one suite for eBPF and inotify.

Each test runs a StateTracker over a MemoryRouter (node 1) that follows the
watcher; a second MemoryRouter on the same network (node 2) resolves. The
order of what happens is recorded in one list, so "advertised before
`/images/create` arrived" is asserted as an order, not a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.routing.router import MemoryNetwork, MemoryRouter, Peer
from daemon.state.containerd import ContainerdClient, ImageCreated
from daemon.state.store import ContainerdStore
from daemon.state.tracker import StateTracker
from ebpf.errors import EbpfUnavailable
from ebpf.pid import socket_owner_pid
from ebpf.probe import preflight
from ebpf.records import BlobEvent, SeenCommitted, SeenDeleted
from ebpf.watcher import ContentWatcher, EbpfWatcher, InotifyWatcher, open_watcher
from tests.support.containerd import ContainerdProcess
from tests.support.fixtures_upstream import ImageFactory
from tests.support.upstream import UpstreamRegistry

pytestmark = pytest.mark.integration

Step = tuple[str, str]


class RecordingRouter(MemoryRouter):
    """A MemoryRouter that appends each advertise and withdraw to a log."""

    def __init__(self, network: MemoryNetwork, me: Peer, log: list[Step]) -> None:
        super().__init__(network, me)
        self._log = log

    async def advertise(self, keys: Collection[str]) -> None:
        await super().advertise(keys)
        self._log.extend(("advertise", key) for key in keys)

    async def withdraw(self, keys: Collection[str]) -> None:
        await super().withdraw(keys)
        self._log.extend(("withdraw", key) for key in keys)


class Tap:
    """A ContentWatcher that logs each event of the one it wraps."""

    def __init__(self, inner: ContentWatcher, log: list[Step]) -> None:
        self.kind = inner.kind
        self.inner = inner
        self._log = log

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def __aiter__(self) -> AsyncIterator[BlobEvent]:
        async for event in self.inner:
            name = "committed" if isinstance(event, SeenCommitted) else "deleted"
            self._log.append((name, event.digest))
            yield event


@dataclass
class Node:
    """Node 1 following containerd and a watcher; node 2 on the same network."""

    containerd: ContainerdProcess
    log: list[Step] = field(default_factory=list)
    network: MemoryNetwork = field(default_factory=MemoryNetwork)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.other = MemoryRouter(self.network, Peer("node2", "127.0.1.2"))

    def seen(self, kind: str) -> list[str]:
        return [digest for step, digest in self.log if step == kind]

    async def until(self, step: Step, timeout_s: float = 15) -> None:
        async with asyncio.timeout(timeout_s):
            while step not in self.log:
                await asyncio.sleep(0.02)

    async def resolvable(self, key: str) -> bool:
        return [peer async for peer in self.other.resolve(key, 1)] != []


def make_watcher(kind: str, containerd: ContainerdProcess) -> ContentWatcher:
    if kind == "inotify":
        return InotifyWatcher(containerd.content_path)
    pid = socket_owner_pid(str(containerd.socket))
    assert pid == containerd.pid
    reason = preflight(pid)
    if reason is not None:
        pytest.skip(f"eBPF cannot run here: {reason}")
    return EbpfWatcher(containerd.content_path, pid)


async def watch_creates(client: ContainerdClient, node: Node) -> None:
    """Log each /images/create and whether node 2 resolves its blobs then."""
    async for event in client.subscribe(['topic=="/images/create"']):
        if isinstance(event, ImageCreated):
            node.log.append(("images/create", event.name))


@pytest.fixture(params=["ebpf", "inotify"])
async def node(
    request: pytest.FixtureRequest, containerd: ContainerdProcess
) -> AsyncIterator[Node]:
    node = Node(containerd)
    watcher = Tap(make_watcher(request.param, containerd), node.log)
    client = ContainerdClient(str(containerd.socket), containerd.namespace)
    await client.connect()
    store = ContainerdStore(client, containerd.content_path)
    router = RecordingRouter(node.network, Peer("node1", "127.0.1.1"), node.log)
    tracker = StateTracker(
        client, store, router, lambda r, k: True, 600, unrestricted=True
    )
    try:
        await watcher.start()
        node.tasks = [
            asyncio.create_task(tracker.run()),
            asyncio.create_task(tracker.follow(watcher)),
            asyncio.create_task(watch_creates(client, node)),
        ]
        async with asyncio.timeout(10):
            while tracker.walks == 0:
                await asyncio.sleep(0.02)
        yield node
    finally:
        for task in node.tasks:
            task.cancel()
        await watcher.close()
        await asyncio.gather(*node.tasks, return_exceptions=True)
        await client.close()


async def pull(node: Node, upstream: UpstreamRegistry, image: object, repo: str) -> str:
    ref = upstream.push(image, repo, "v1")  # type: ignore[arg-type]
    await asyncio.to_thread(node.containerd.pull, ref)
    await node.until(("images/create", ref))
    return ref


async def test_each_blob_is_advertised_before_the_image_is_created(
    node: Node, upstream: UpstreamRegistry, image_factory: ImageFactory
) -> None:
    # a first pull proves the /images/create subscription is live
    await pull(node, upstream, image_factory((500,), seed=40), "w/warm")
    image = image_factory((300_000, 200_000, 100_000), seed=41)
    digests = {blob.digest for blob in image.all_blobs()}
    start = len(node.log)

    ref = await pull(node, upstream, image, "w/multi")
    steps = node.log[start:]
    created = steps.index(("images/create", ref))

    committed = [d for step, d in steps if step == "committed"]
    assert sorted(committed) == sorted(digests)  # one event per blob, no others
    for digest in digests:
        assert steps.index(("advertise", digest)) < created, digest
        assert await node.resolvable(digest)


async def test_content_rm_and_garbage_collection_withdraw(
    node: Node, upstream: UpstreamRegistry, image_factory: ImageFactory
) -> None:
    image = image_factory((4000, 5000), seed=42)
    ref = await pull(node, upstream, image, "w/gone")
    layer = image.layers[0].digest
    await node.until(("advertise", layer))

    await asyncio.to_thread(node.containerd.ctr, "content", "rm", layer)
    await node.until(("deleted", layer))
    await node.until(("withdraw", layer))
    assert not await node.resolvable(layer)

    # the rest goes when the image does, deleted by the garbage collector
    await asyncio.to_thread(node.containerd.ctr, "images", "rm", ref)
    for blob in image.all_blobs():
        await node.until(("deleted", blob.digest))
        await node.until(("withdraw", blob.digest))


async def test_renames_elsewhere_are_ignored(node: Node, tmp_path: Path) -> None:
    content = node.containerd.content_path
    for directory in (content / "blobs" / "other", tmp_path / "blobs" / "sha256"):
        directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(str(directory).encode()).hexdigest()
        (directory / "tmp").write_bytes(b"x")
        os.rename(directory / "tmp", directory / name)

    # containerd's own commit afterwards is the first event seen
    data = b"sentinel blob"
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    await asyncio.to_thread(node.containerd.ingest, data, "sentinel", digest)
    await node.until(("committed", digest))
    assert node.seen("committed") == [digest]


async def test_ebpf_ignores_other_processes(
    containerd: ContainerdProcess, tmp_path: Path
) -> None:
    """A probe on our own pid sees our rename into the blobs, not containerd's."""
    reason = preflight(os.getpid())
    if reason is not None:
        pytest.skip(f"eBPF cannot run here: {reason}")
    blobs = containerd.content_path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    watcher = EbpfWatcher(containerd.content_path, os.getpid())
    await watcher.start()
    try:
        data = b"committed by containerd"
        theirs = f"sha256:{hashlib.sha256(data).hexdigest()}"
        await asyncio.to_thread(containerd.ingest, data, "theirs", theirs)
        mine = hashlib.sha256(b"mine").hexdigest()
        (tmp_path / "mine").write_bytes(b"mine")
        os.rename(tmp_path / "mine", blobs / mine)
        os.unlink(blobs / mine)

        async with asyncio.timeout(5):
            events = [await anext(aiter(watcher)) for _ in range(2)]
        assert events[0] == SeenCommitted(f"sha256:{mine}", events[0].seen_ns)
        assert events[1] == SeenDeleted(f"sha256:{mine}", events[1].seen_ns)
    finally:
        await watcher.close()
    assert [event async for event in watcher] == []


async def test_inotify_waits_for_the_blob_directory(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet"
    watcher = InotifyWatcher(root)
    await watcher.start()
    try:
        early = hashlib.sha256(b"early").hexdigest()
        late = hashlib.sha256(b"late").hexdigest()
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "blobs" / "sha256" / early).write_bytes(b"early")
        await asyncio.sleep(0.05)
        (tmp_path / "late").write_bytes(b"late")
        os.rename(tmp_path / "late", root / "blobs" / "sha256" / late)

        async with asyncio.timeout(5):
            seen = set()
            while f"sha256:{late}" not in seen:
                seen.add((await anext(aiter(watcher))).digest)
        assert seen == {f"sha256:{early}", f"sha256:{late}"}
    finally:
        await watcher.close()


async def test_auto_falls_back_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing_pid = 2**22 + 1  # above pid_max's ceiling, so never a process
    watcher, reason = await open_watcher("auto", tmp_path, missing_pid)
    await watcher.close()
    assert watcher.kind == "inotify"
    assert "does not exist" in reason

    watcher, reason = await open_watcher("auto", tmp_path, None)
    await watcher.close()
    assert (watcher.kind, reason.count("\n")) == ("inotify", 0)
    assert "pid is unknown" in reason

    with pytest.raises(EbpfUnavailable):
        await open_watcher("ebpf", tmp_path, missing_pid)

    if preflight(os.getpid()) is not None:
        return  # the cases below need a host where eBPF could run
    # without bcc (a None entry makes `import bcc` fail) auto says so
    monkeypatch.setitem(sys.modules, "bcc", None)
    watcher, reason = await open_watcher("auto", tmp_path, os.getpid())
    await watcher.close()
    assert watcher.kind == "inotify"
    assert "bcc is not importable" in reason


async def test_auto_prefers_ebpf_where_it_runs(tmp_path: Path) -> None:
    reason = preflight(os.getpid())
    if reason is not None:
        pytest.skip(f"eBPF cannot run here: {reason}")
    watcher, why = await open_watcher("auto", tmp_path, os.getpid())
    await watcher.close()
    assert watcher.kind == "ebpf"
    assert str(os.getpid()) in why
