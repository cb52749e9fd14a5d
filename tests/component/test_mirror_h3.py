"""The mirror path over real HTTP/3: one misbehaving test peer, one real peer.

The node under test holds nothing. The DHT is a MemoryRouter that names the
faulty peer first; the bytes move over real QUIC (aioquic, identity-bound
TLS) from a FaultyPeer and from a real TransportServer over a MemoryStore.
Each fault must end with containerd's view intact: the right bytes, or a
body cut short (never complete and wrong), and the failing peer avoided.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from daemon.config import RegistryConfig
from daemon.registry.local import LocalContent
from daemon.registry.mirror import PeerMirror
from daemon.registry.server import RegistryApi
from daemon.routing.router import MemoryNetwork, MemoryRouter, Peer
from daemon.state.memory import MemoryStore
from daemon.values import Address
from tests.support.faultypeer import FaultyPeer
from tests.support.upstream import free_port
from transport.client import H3PeerClient
from transport.server import TransportServer

BLOB = bytes(range(256)) * 4096 * 2  # 2 MiB
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PATH = f"/v2/team/app/blobs/{DIGEST}"
FAULTY_HOST, GOOD_HOST, NODE_HOST = "127.0.3.60", "127.0.3.61", "127.0.3.62"


class Scene:
    def __init__(
        self, url: str, session: aiohttp.ClientSession, faulty: FaultyPeer
    ) -> None:
        self.url = url
        self.session = session
        self.faulty = faulty

    async def get(self) -> tuple[int, bytes | None, float]:
        started = time.monotonic()
        async with self.session.get(
            self.url + PATH + "?ns=registry.example"
        ) as response:
            try:
                body: bytes | None = await response.read()
            except aiohttp.ClientPayloadError:
                body = None
            return response.status, body, time.monotonic() - started


async def scene_with(
    fault: str, tmp_path: Path, good: bool = True
) -> AsyncIterator[Scene]:
    port = free_port(FAULTY_HOST)
    headers = {
        "content-type": "application/octet-stream",
        "docker-content-digest": DIGEST,
    }
    faulty = FaultyPeer(
        Address(FAULTY_HOST, port),
        {PATH: (headers, BLOB)},
        fault=fault,
        fault_at=700_000,
    )
    await faulty.start()
    store = MemoryStore()
    store.add_blob(BLOB)
    good_keys = create_new_key_pair()
    server = TransportServer(
        listen=Address(GOOD_HOST, port),
        key_pair=good_keys,
        data_dir=tmp_path / "good",
        content=LocalContent(RegistryConfig(), store),
        engine="aioquic",
        max_datagram_size=8952,
    )
    await server.start()
    network = MemoryNetwork()
    me = MemoryRouter(network, Peer("me", NODE_HOST))
    await MemoryRouter(network, Peer(faulty.peer_id, FAULTY_HOST)).advertise([DIGEST])
    if good:
        good_id = str(ID.from_pubkey(good_keys.public_key))
        await MemoryRouter(network, Peer(good_id, GOOD_HOST)).advertise([DIGEST])
    client = H3PeerClient(
        bind_host=NODE_HOST,
        port=port,
        key_pair=create_new_key_pair(),
        data_dir=tmp_path / "node",
        engine="aioquic",
        max_datagram_size=8952,
    )
    mirror = PeerMirror(
        me, client, resolve_timeout_s=0.02, resolve_retries=3, resolve_tags=True
    )

    async def ready() -> bool:
        return True

    api = RegistryApi(LocalContent(RegistryConfig(), MemoryStore()), ready, mirror)
    test_server = TestServer(api.application(), host="127.0.0.1")
    await test_server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Scene(f"http://127.0.0.1:{test_server.port}", session, faulty)
    finally:
        await test_server.close()
        await client.close()
        await server.close()
        await faulty.close()


@pytest.mark.parametrize("fault", ["close_mid_stream", "short", "stall_body", "long"])
async def test_a_broken_body_resumes_from_the_good_peer(
    fault: str, tmp_path: Path
) -> None:
    async for scene in scene_with(fault, tmp_path):
        status, body, _ = await scene.get()
        assert (status, body) == (200, BLOB)  # resumed with Range at the byte reached


async def test_corrupt_bytes_never_go_out_and_the_peer_is_avoided(
    tmp_path: Path,
) -> None:
    async for scene in scene_with("corrupt", tmp_path):
        for _ in range(2):
            status, body, _ = await scene.get()
            assert (status, body) == (200, BLOB)  # checked, then from the good peer
        assert len(scene.faulty.requests) == 1  # not asked again


@pytest.mark.parametrize("fault", ["stall_headers", "wrong_identity"])
async def test_a_peer_failing_before_headers_is_skipped(
    fault: str, tmp_path: Path
) -> None:
    async for scene in scene_with(fault, tmp_path):
        status, body, seconds = await scene.get()
        assert (status, body) == (200, BLOB)
        assert seconds < 5


async def test_only_failing_peers_means_a_404(tmp_path: Path) -> None:
    async for scene in scene_with("stall_headers", tmp_path, good=False):
        status, _, seconds = await scene.get()
        assert status == 404
        assert seconds < 3  # one peer header timeout, then the fall-back answer
