"""Advertise lag: blob commit on node 1 to resolvable on node 2, per watcher.

A private containerd pulls fresh multi-layer images from a local
docker-registry. Node 1 is a StateTracker that follows containerd's events
and, for `ebpf` and `inotify`, a content watcher; `events` is containerd's
event stream alone. Nodes 1 and 2 share one in-process MemoryNetwork
(MemoryRouter), so a key is resolvable by node 2 the instant node 1's
advertise lands: the lag measured is the watcher's plus the tracker's,
without the DHT (bench.router measures that part separately).

The commit instant of every blob comes from a separate reference eBPF probe
on containerd (the kernel's CLOCK_MONOTONIC at the rename's return), so
the three modes are timed against the same clock. Probe cost: CPU of the
watcher's polling thread plus the kernel run time of its BPF programs
(kernel.bpf_stats_enabled, switched on for the run and restored), against
the wall time of the pulls. Needs root.

    python -m bench.advertise [--pulls 5] [--layers 6] [--layer-kib 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

from daemon.routing.router import MemoryNetwork, MemoryRouter, Peer
from daemon.state.containerd import ContainerdClient
from daemon.state.store import ContainerdStore
from daemon.state.tracker import StateTracker
from ebpf.pid import socket_owner_pid
from ebpf.records import SeenCommitted
from ebpf.watcher import ContentWatcher, EbpfWatcher, InotifyWatcher
from tests.support.containerd import ContainerdProcess
from tests.support.images import build_image
from tests.support.upstream import UpstreamRegistry

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
MODES = ("ebpf", "inotify", "events")


class StampingRouter(MemoryRouter):
    """A MemoryRouter noting when each key became resolvable to the others."""

    def __init__(self, network: MemoryNetwork, me: Peer) -> None:
        super().__init__(network, me)
        self.at_ns: dict[str, int] = {}

    async def advertise(self, keys: Collection[str]) -> None:
        await super().advertise(keys)
        now = time.monotonic_ns()
        for key in keys:
            self.at_ns.setdefault(key, now)


async def reference(watcher: EbpfWatcher, commits: dict[str, int]) -> None:
    async for event in watcher:
        if isinstance(event, SeenCommitted):
            commits.setdefault(event.digest, event.seen_ns)


def bpf_run_ns(fds: list[int]) -> int:
    """Kernel run time of BPF programs, from our fdinfo (needs stats on)."""
    total = 0
    for fd in fds:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("run_time_ns:"):
                total += int(line.split()[1])
    return total


async def run_mode(
    mode: str,
    ctrd: ContainerdProcess,
    upstream: UpstreamRegistry,
    work: Path,
    args: argparse.Namespace,
    commits: dict[str, int],
) -> dict[str, object]:
    client = ContainerdClient(str(ctrd.socket), ctrd.namespace)
    await client.connect()
    network = MemoryNetwork()
    node1 = StampingRouter(network, Peer("node1", "127.0.1.1"))
    node2 = MemoryRouter(network, Peer("node2", "127.0.1.2"))
    store = ContainerdStore(client, ctrd.content_path)
    tracker = StateTracker(client, store, node1, lambda r, k: True, 600, True)
    watcher: ContentWatcher | None = None
    if mode == "ebpf":
        watcher = EbpfWatcher(ctrd.content_path, ctrd.pid or 0)
    elif mode == "inotify":
        watcher = InotifyWatcher(ctrd.content_path)
    if watcher is not None:
        await watcher.start()
    tasks = [asyncio.create_task(tracker.run())]
    if watcher is not None:
        tasks.append(asyncio.create_task(tracker.follow(watcher)))
    while tracker.walks == 0:
        await asyncio.sleep(0.02)

    images = []
    for number in range(args.pulls):
        sizes = [args.layer_kib * 1024] * args.layers
        seed = hash((mode, number)) & 0xFFFF
        image = build_image(work / f"{mode}-{number}", sizes, seed=seed)
        images.append((image, upstream.push(image, f"bench/{mode}", f"v{number}")))

    fds = watcher.program_fds() if isinstance(watcher, EbpfWatcher) else []
    thread_s = bpf_ns = 0.0
    cpu = wall = 0.0
    lags: list[float] = []
    for image, ref in images:
        thread0 = watcher.thread_cpu_s() if isinstance(watcher, EbpfWatcher) else 0.0
        bpf0, cpu0, started = bpf_run_ns(fds), time.process_time(), time.monotonic()
        await asyncio.to_thread(ctrd.pull, ref)
        digests = [blob.digest for blob in image.all_blobs()]
        async with asyncio.timeout(30):
            while not all(d in node1.at_ns and d in commits for d in digests):
                await asyncio.sleep(0.01)
        wall += time.monotonic() - started
        cpu += time.process_time() - cpu0
        bpf_ns += bpf_run_ns(fds) - bpf0
        if isinstance(watcher, EbpfWatcher):
            thread_s += watcher.thread_cpu_s() - thread0
        for digest in digests:
            assert [p async for p in node2.resolve(digest, 1)], digest
            lags.append((node1.at_ns[digest] - commits[digest]) / 1e9)

    probe_cpu = thread_s + bpf_ns / 1e9
    for task in tasks:
        task.cancel()
    if watcher is not None:
        await watcher.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    return {
        "mode": mode,
        "lags": lags,
        "cpu": cpu,
        "wall": wall,
        "probe": probe_cpu,
        "bpf": bpf_ns / 1e9,
    }


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-advertise-") as scratch:
        work = Path(scratch)
        upstream = UpstreamRegistry(work / "upstream")
        ctrd = ContainerdProcess(work / "containerd")
        stats_before = STATS_SYSCTL.read_text().strip()
        upstream.start()
        try:
            ctrd.start()
            STATS_SYSCTL.write_text("1")
            pid = socket_owner_pid(str(ctrd.socket))
            commits: dict[str, int] = {}
            ref_watcher = EbpfWatcher(ctrd.content_path, pid)
            await ref_watcher.start()
            ref_task = asyncio.create_task(reference(ref_watcher, commits))
            try:
                results = [
                    await run_mode(mode, ctrd, upstream, work, args, commits)
                    for mode in MODES
                ]
            finally:
                await ref_watcher.close()
                await ref_task
        finally:
            STATS_SYSCTL.write_text(stats_before)
            ctrd.stop()
            upstream.stop()

    print(f"{args.pulls} pulls x ({args.layers} x {args.layer_kib} KiB layers +")
    print("manifest + config) per mode; lag = commit -> resolvable on node 2")
    print(
        f"{'mode':8} {'n':>4} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
        f"{'proc CPU %':>10} {'probe CPU %':>11} {'of it BPF %':>11}"
    )
    for result in results:
        lags = result["lags"]
        assert isinstance(lags, list)
        wall, cpu, probe = result["wall"], result["cpu"], result["probe"]
        assert isinstance(wall, float) and isinstance(cpu, float)
        assert isinstance(probe, float)
        print(
            f"{result['mode']:8} {len(lags):>4} "
            f"{percentile(lags, 0.5) * 1e3:>9.2f} {percentile(lags, 0.99) * 1e3:>9.2f} "
            f"{max(lags) * 1e3:>9.2f} {100 * cpu / wall:>10.2f} "
            f"{100 * probe / wall:>11.3f} {100 * result['bpf'] / wall:>11.3f}"  # type: ignore[operator]
        )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pulls", type=int, default=5)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--layer-kib", type=int, default=2048)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
