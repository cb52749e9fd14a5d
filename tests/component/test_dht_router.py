"""DhtRouter against real py-libp2p nodes, each its own OS process on 127.0.1.1x.

Nodes run `tests.support.dhtnode`; a cluster's first node has no bootstrap
peers and the others get its address *without* `/p2p/<id>`, so every test
also exercises learning the peer id from the Noise handshake.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from libp2p.kad_dht.kad_dht import _encode_key

from daemon.routing import host as hosts
from daemon.routing.bootstrap import StaticBootstrapper
from daemon.routing.dht import DhtRouter
from daemon.routing.identity import KEY_FILE
from daemon.routing.keys import cid, multihash
from daemon.values import Address
from tests.support.dhtnode import (
    NodeProcess,
    bare_address,
    spawn_cluster,
    stop_all,
    wait_joined,
)

HUNG_BOUND_S = 1.5


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[NodeProcess]]:
    nodes = await spawn_cluster(tmp_path, 4)
    try:
        yield nodes
    finally:
        await stop_all(nodes)


async def _holders(node: NodeProcess, key: str, count: int = 5) -> list[str]:
    reply = await node.ask("resolve", key=key, count=count)
    return [peer_id for peer_id, _ in reply["peers"]]


async def _eventually(check: object, timeout_s: float) -> float:
    """Poll the async predicate until true; return the seconds it took."""
    start = time.monotonic()
    while not await check():  # type: ignore[operator]
        assert time.monotonic() - start < timeout_s, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


# transport, identity, keys, logging


def test_keys_reach_the_dht_as_the_cid_multihash() -> None:
    key = "sha256:" + "ab" * 32
    assert _encode_key(cid(key)) == multihash(key)


def test_host_offers_only_noise_and_yamux() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    upgrader = hosts.build(create_new_key_pair()).get_network().upgrader  # type: ignore[attr-defined]
    assert list(upgrader.security_multistream.transports) == ["/noise"]
    assert list(upgrader.muxer_multistream.transports) == ["/yamux/1.0.0"]


def _negotiate(address: str, protocol: str) -> str:
    parts = bare_address(address).split("/")
    with socket.create_connection((parts[2], int(parts[4])), timeout=5) as sock:
        for line in ("/multistream/1.0.0\n", protocol + "\n"):
            data = line.encode()
            sock.sendall(bytes([len(data)]) + data)
        replies = b""
        while replies.count(b"\n") < 2:
            chunk = sock.recv(1024)
            if not chunk:
                break
            replies += chunk
    return replies.decode(errors="replace")


async def test_node_refuses_plaintext_tls_and_secio(tmp_path: Path) -> None:
    node = await NodeProcess.spawn("127.0.1.19:0", tmp_path / "n", [])
    try:
        address = node.addresses[0]
        for protocol in ("/plaintext/2.0.0", "/tls/1.0.0", "/secio/1.0.0"):
            assert "na\n" in await asyncio.to_thread(_negotiate, address, protocol)
        assert (
            "/noise\n" in (await asyncio.to_thread(_negotiate, address, "/noise"))[20:]
        )
    finally:
        await node.stop()


async def test_router_in_process_alone_by_design(tmp_path: Path) -> None:
    router = DhtRouter(
        listen=Address("127.0.1.18", 0),
        data_dir=tmp_path,
        bootstrapper=StaticBootstrapper([]),
    )
    async with router:
        assert router.addresses[0].startswith("/ip4/127.0.1.18/tcp/")
        assert not router.addresses[0].startswith("/ip4/127.0.1.18/tcp/0/")
        assert router.addresses[0].endswith("/p2p/" + router.peer_id)
        await asyncio.sleep(0.3)
        assert await router.ready()  # static bootstrap, no peers: alone by design
        assert await router.peer_count() == 0
        assert [p async for p in router.resolve("sha256:none", 3)] == []
        libp2p_log = logging.getLogger("libp2p")
        assert libp2p_log.level == logging.CRITICAL and libp2p_log.propagate
    await router.close()  # idempotent
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600


# records


async def test_advertise_resolves_on_every_other_node(
    cluster: list[NodeProcess],
) -> None:
    provider, *others = cluster
    key = "sha256:" + "01" * 32

    await provider.ask("advertise", keys=[key])

    for node in others:
        reply = await node.ask("resolve", key=key, count=3)
        assert reply["peers"] == [[provider.peer_id, "127.0.1.10"]]
    assert await _holders(provider, key) == []  # never itself
    assert await _holders(others[0], "sha256:" + "ff" * 32) == []


async def test_withdraw_is_gone_from_every_node(cluster: list[NodeProcess]) -> None:
    provider = cluster[1]
    keys = [f"registry.test/app:v{i}" for i in range(5)]
    await provider.ask("advertise", keys=keys)
    for node in cluster:
        if node is not provider:
            assert await _holders(node, keys[0]) == [provider.peer_id]

    reply = await provider.ask("withdraw", keys=keys)

    assert reply["elapsed_ms"] < 1000
    for node in cluster:
        for key in keys:
            assert await _holders(node, key) == []
        assert (await node.ask("stats"))["records"] == 0


async def test_records_expire_after_the_ttl(tmp_path: Path) -> None:
    nodes = await spawn_cluster(
        tmp_path, 3, "--record-ttl", "2s", "--republish-interval", "1h", first_ip=14
    )
    try:
        # A node sends everything it advertises to each peer it newly sees
        # (a fresh timestamp there); let those first pushes pass.
        await asyncio.sleep(1.5)
        key = "sha256:" + "02" * 32
        await nodes[0].ask("advertise", keys=[key])
        assert await _holders(nodes[1], key) == [nodes[0].peer_id]

        await asyncio.sleep(2.3)

        for node in nodes[1:]:
            assert await _holders(node, key) == []
    finally:
        await stop_all(nodes)


async def test_a_killed_node_is_not_returned(cluster: list[NodeProcess]) -> None:
    victim, holder = cluster[3], cluster[2]
    key = "sha256:" + "03" * 32
    await victim.ask("advertise", keys=[key])
    await holder.ask("advertise", keys=[key])
    assert set(await _holders(cluster[0], key)) == {victim.peer_id, holder.peer_id}

    victim.proc.kill()
    await victim.proc.wait()

    async def victim_gone() -> bool:
        return await _holders(cluster[0], key) == [holder.peer_id]

    assert await _eventually(victim_gone, 2.0) < 2.0
    for node in cluster[:2]:
        reply = await node.ask("resolve", key=key, count=3)
        assert reply["peers"] == [[holder.peer_id, "127.0.1.12"]]
        assert reply["elapsed_ms"] < 100


async def test_a_hung_node_costs_a_bounded_delay(cluster: list[NodeProcess]) -> None:
    hung, holder, asker = cluster[3], cluster[1], cluster[0]
    key = "sha256:" + "04" * 32
    await hung.ask("advertise", keys=[key])
    await holder.ask("advertise", keys=[key])

    hung.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        await asker.ask("advertise", keys=["sha256:" + "05" * 32])
        assert time.monotonic() - start < HUNG_BOUND_S
        for _ in range(15):
            reply = await asker.ask("resolve", key=key, count=3)
            assert reply["elapsed_ms"] < HUNG_BOUND_S * 1000
            await asyncio.sleep(0.2)
        assert reply["peers"] == [[holder.peer_id, "127.0.1.11"]]
        miss = await asker.ask("resolve", key="sha256:" + "06" * 32, count=3)
        assert miss["peers"] == [] and miss["elapsed_ms"] < HUNG_BOUND_S * 1000
    finally:
        hung.proc.send_signal(signal.SIGCONT)

    async def hung_back() -> bool:
        return set(await _holders(asker, key)) == {hung.peer_id, holder.peer_id}

    await _eventually(hung_back, 5.0)


async def test_two_hundred_keys_at_once_resolve_everywhere(
    cluster: list[NodeProcess],
) -> None:
    provider = cluster[0]
    keys = [f"sha256:{i:064x}" for i in range(200)]

    reply = await provider.ask("advertise", keys=keys, timeout_s=60.0)

    assert reply["elapsed_ms"] < 30_000
    for node in cluster[1:]:
        results = (await node.ask("resolve_many", keys=keys, count=1))["results"]
        missing = [k for k, (peers, _) in zip(keys, results, strict=True) if not peers]
        assert missing == []


async def test_restart_keeps_the_peer_id_and_rejoins(
    cluster: list[NodeProcess], tmp_path: Path
) -> None:
    old = cluster[2]
    key_before = "sha256:" + "07" * 32
    await cluster[0].ask("advertise", keys=[key_before])
    await old.stop()

    seed = [bare_address(cluster[1].addresses[0])]
    new = await NodeProcess.spawn("127.0.1.12:0", tmp_path / "n2", seed)
    cluster[2] = new

    assert new.peer_id == old.peer_id
    key_file = tmp_path / "n2" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    await wait_joined(cluster, 3)

    async def learned_old_key() -> bool:
        return await _holders(new, key_before) == [cluster[0].peer_id]

    await _eventually(learned_old_key, 5.0)
    key_after = "sha256:" + "08" * 32
    await new.ask("advertise", keys=[key_after])
    assert await _holders(cluster[3], key_after) == [new.peer_id]
