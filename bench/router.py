"""Router: resolve latency, advertise-to-resolvable time, CPU and RSS per node.

Each node is its own OS process (`tests.support.dhtnode`) on 127.0.1.N, all
sharing this machine's cores, so larger clusters also measure contention.
Resolve times are taken inside the asking node's asyncio loop, through the
trio bridge, as the registry would see them.

    python -m bench.router [--sizes 3,10,30] [--keys 100]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from tests.support.dhtnode import NodeProcess, spawn_cluster, stop_all


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def advertise_lags(
    provider: NodeProcess, askers: list[NodeProcess], rounds: int
) -> list[float]:
    """Seconds from `advertise` returning on one node to resolvable on others."""
    lags = []
    for number in range(rounds):
        key = f"bench-lag:{time.time_ns()}:{number}"
        started = time.monotonic()
        await provider.ask("advertise", keys=[key])
        for asker in askers:
            while not (await asker.ask("resolve", key=key, count=1))["peers"]:
                if time.monotonic() - started > 30:
                    break
                await asyncio.sleep(0.002)
            lags.append(time.monotonic() - started)
    return lags


async def measure(size: int, keys: int, base: Path) -> None:
    started = time.monotonic()
    nodes = await spawn_cluster(
        base, size, first_ip=100, min_peers=min(size - 1, 10), join_timeout_s=180
    )
    joined = time.monotonic() - started
    try:
        provider, asker = nodes[-1], nodes[0]
        names = [f"sha256:{i:064x}" for i in range(keys)]
        started = time.monotonic()
        await provider.ask("advertise", keys=names, timeout_s=300)
        advertised = time.monotonic() - started
        await asyncio.sleep(1.0)
        cpu_before = (await asker.ask("stats"))["cpu_s"]
        hits = (await asker.ask("resolve_many", keys=names, count=1))["results"]
        misses = (
            await asker.ask(
                "resolve_many", keys=[f"miss:{i}" for i in range(keys)], count=1
            )
        )["results"]
        cpu_per_lookup = ((await asker.ask("stats"))["cpu_s"] - cpu_before) / (2 * keys)
        found = sum(1 for peers, _ in hits if peers)
        hit_ms = [ms for _, ms in hits]
        miss_ms = [ms for _, ms in misses]
        lags = await advertise_lags(provider, nodes[:-1], rounds=5)
        stats = [await node.ask("stats") for node in nodes]
        rss = [s["rss_bytes"] / 2**20 for s in stats]
        tables = [s["table"] for s in stats]
        print(
            f"\n{size} nodes (joined in {joined:.1f}s; tables {min(tables)}"
            f"-{max(tables)} peers)\n"
            f"  advertise {keys} keys on one node: {advertised * 1e3:.0f} ms\n"
            f"  hits {found}/{keys}: p50 {percentile(hit_ms, 0.5):.2f} ms,"
            f" p99 {percentile(hit_ms, 0.99):.2f} ms\n"
            f"  misses: p50 {percentile(miss_ms, 0.5):.2f} ms,"
            f" p99 {percentile(miss_ms, 0.99):.2f} ms\n"
            f"  advertise -> resolvable on every other node: p50"
            f" {percentile(lags, 0.5) * 1e3:.0f} ms, max {max(lags) * 1e3:.0f} ms\n"
            f"  CPU per lookup on the asking node: {cpu_per_lookup * 1e3:.3f} ms\n"
            f"  RSS per node: {min(rss):.0f}-{max(rss):.0f} MiB"
        )
    finally:
        await stop_all(nodes)


async def main_async(sizes: list[int], keys: int) -> None:
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="peerpull-bench-router-") as scratch:
            await measure(size, keys, Path(scratch))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,10,30")
    parser.add_argument("--keys", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main_async([int(n) for n in args.sizes.split(",")], args.keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
