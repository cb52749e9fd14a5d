"""The HTTP/3 peer transport: real aioquic on both ends, real certs, real files.

Servers listen on 127.0.3.1-9; clients bind 127.0.3.20+. The RSS test runs
the server in its own process (`python -m tests.component.test_transport
SERVE_ARGS`) and reads its VmRSS from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from daemon.config import RegistryConfig
from daemon.registry.local import LocalContent
from daemon.routing.identity import load_or_create
from daemon.state.containerd import Descriptor
from daemon.state.store import FileBlob, open_beneath
from daemon.values import Address
from tests.support.faultypeer import FaultyPeer
from transport import engine as engines
from transport.client import H3PeerClient
from transport.exchange import RECEIVE_HIGH_BYTES
from transport.peer import PeerIdentityMismatch, PeerStreamBroken, PeerUnavailable
from transport.server import TransportServer

MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
)
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


class DirectoryStore:
    """Blobs in `<root>/blobs/sha256/<hex>` files; counts the blobs open."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.open_blobs = 0
        self.chunks_read = 0
        self.images: dict[str, Descriptor] = {}

    def add(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        folder = self.root / "blobs" / "sha256"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / digest).write_bytes(content)
        return f"sha256:{digest}"

    async def size(self, digest: str) -> int | None:
        return None

    async def open(self, digest: str) -> FileBlob | None:
        opened = open_beneath(self.root, digest)
        if opened is None:
            return None
        store = self

        class Counted(FileBlob):
            async def chunks(
                self, offset: int = 0, length: int | None = None
            ) -> AsyncIterator[bytes]:
                async for chunk in super().chunks(offset, length):
                    store.chunks_read += 1
                    yield chunk

            async def close(self) -> None:
                if self.fileno() is not None:
                    store.open_blobs -= 1
                await super().close()

        self.open_blobs += 1
        return Counted(digest, *opened)

    async def resolve(self, name: str) -> Descriptor | None:
        return self.images.get(name)


class Node:
    """A TransportServer over a DirectoryStore, with its peer id."""

    def __init__(self, tmp: Path, host: str, datagram: int | str = 1350) -> None:
        self.store = DirectoryStore(tmp / "content")
        self.key_pair = load_or_create(tmp / "server")
        self.peer_id = str(ID.from_pubkey(self.key_pair.public_key))
        self.content = LocalContent(RegistryConfig(), self.store)
        self.server = TransportServer(
            listen=Address(host, 0),
            key_pair=self.key_pair,
            data_dir=tmp / "server",
            content=self.content,
            engine="aioquic",
            max_datagram_size=datagram,
        )


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    served = Node(tmp_path, "127.0.3.1")
    await served.server.start()
    try:
        yield served
    finally:
        await served.server.close()


def _client(
    tmp: Path, port: int, *, host: str = "127.0.3.20", **kw: Any
) -> H3PeerClient:
    return H3PeerClient(
        bind_host=host,
        port=port,
        key_pair=create_new_key_pair(),
        data_dir=tmp / f"client-{host}",
        engine="aioquic",
        max_datagram_size=1350,
        **kw,
    )


@pytest.fixture
async def client(tmp_path: Path, node: Node) -> AsyncIterator[H3PeerClient]:
    peer_client = _client(tmp_path, node.server.port)
    try:
        yield peer_client
    finally:
        await peer_client.close()


async def _body(response: object) -> bytes:
    return b"".join([chunk async for chunk in response])  # type: ignore[attr-defined]


# the server answers exactly what LocalContent answers


@pytest.mark.parametrize(
    ("method", "range_header", "ns"),
    [
        ("GET", None, None),
        ("HEAD", None, None),
        ("GET", "bytes=100-4099", "docker.io"),
        ("GET", "bytes=-7", None),
        ("GET", "bytes=999999999-", None),
    ],
)
async def test_blob_answers_equal_local_content(
    node: Node,
    client: H3PeerClient,
    method: str,
    range_header: str | None,
    ns: str | None,
) -> None:
    data = os.urandom(3 << 20)
    digest = node.store.add(data)
    path = f"/v2/library/app/blobs/{digest}"
    headers = {"range": range_header} if range_header else {}
    query = f"?ns={ns}" if ns else ""

    response = await client.fetch(
        node.peer_id, "127.0.3.1", method, path + query, headers, 5.0
    )
    body = await _body(response)

    local = await node.content.answer(method, path, [ns] if ns else [], range_header)
    expected = local.body
    if local.blob is not None and method == "GET":
        expected = b"".join(
            [c async for c in local.blob.chunks(local.first, local.length)]
        )
    await local.close()
    assert response.status == local.status
    assert dict(response.headers) == {k.lower(): v for k, v in local.headers.items()}
    assert body == (b"" if method == "HEAD" else expected)
    assert node.store.open_blobs == 0


async def test_manifest_by_tag_and_digest(node: Node, client: H3PeerClient) -> None:
    digest = node.store.add(MANIFEST)
    node.store.images["docker.io/library/app:1"] = Descriptor(
        MANIFEST_TYPE, digest, len(MANIFEST)
    )
    for ref in ("1", digest):
        response = await client.fetch(
            node.peer_id,
            "127.0.3.1",
            "GET",
            f"/v2/library/app/manifests/{ref}?ns=docker.io",
            {},
            5.0,
        )
        assert response.status == 200
        assert response.headers["docker-content-digest"] == digest
        assert response.headers["content-type"] == MANIFEST_TYPE
        assert await _body(response) == MANIFEST


async def test_missing_content_is_404_at_once(node: Node, client: H3PeerClient) -> None:
    await client.fetch(node.peer_id, "127.0.3.1", "HEAD", "/v2/", {}, 5.0)
    missing = "sha256:" + "ab" * 32
    start = time.monotonic()
    response = await client.fetch(
        node.peer_id, "127.0.3.1", "GET", f"/v2/library/app/blobs/{missing}", {}, 5.0
    )
    assert time.monotonic() - start < 0.5
    assert response.status == 404
    assert b"BLOB_UNKNOWN" in await _body(response)


async def test_non_pull_methods_are_refused(node: Node, client: H3PeerClient) -> None:
    response = await client.fetch(
        node.peer_id, "127.0.3.1", "DELETE", "/v2/library/app/blobs/x", {}, 5.0
    )
    assert response.status == 405
    assert await _body(response) == b""


# the client's pool


async def test_connection_is_reused(node: Node, client: H3PeerClient) -> None:
    digest = node.store.add(b"small blob")
    for _ in range(3):
        response = await client.fetch(
            node.peer_id, "127.0.3.1", "GET", f"/v2/a/b/blobs/{digest}", {}, 5.0
        )
        assert await _body(response) == b"small blob"
    assert client.connections_opened == 1


async def test_idle_connections_close_and_pool_is_bounded(
    tmp_path: Path, node: Node
) -> None:
    other = Node(tmp_path / "other", "127.0.3.2")
    await other.server.start()
    peer_client = _client(
        tmp_path, node.server.port, max_connections=1, idle_timeout_s=0.4
    )
    try:
        assert other.server.port != node.server.port
        response = await peer_client.fetch(
            node.peer_id, "127.0.3.1", "GET", "/v2/", {}, 5.0
        )
        assert await _body(response) == b"{}"
        assert list(peer_client._pool) == [node.peer_id]
        await asyncio.sleep(1.0)
        assert peer_client._pool == {}
    finally:
        await peer_client.close()
        await other.server.close()


async def test_pool_closes_least_recently_used(tmp_path: Path) -> None:
    peers = [
        FaultyPeer(Address(f"127.0.3.{3 + i}", 0), {"/v2/": ({}, b"{}")})
        for i in range(2)
    ]
    for peer in peers:
        await peer.start()
    ports = {peer.port for peer in peers}
    try:
        # FaultyPeers listen on their own ports; the client dials one port,
        # so give both the same by restarting the second on the first's port
        await peers[1].close()
        peers[1] = FaultyPeer(
            Address("127.0.3.4", peers[0].port), {"/v2/": ({}, b"{}")}
        )
        await peers[1].start()
        peer_client = _client(tmp_path, peers[0].port, max_connections=1)
        try:
            for index, peer in enumerate(peers):
                response = await peer_client.fetch(
                    peer.peer_id, f"127.0.3.{3 + index}", "GET", "/v2/", {}, 5.0
                )
                await _body(response)
            assert list(peer_client._pool) == [peers[1].peer_id]
            assert peer_client.connections_opened == 2
        finally:
            await peer_client.close()
    finally:
        assert ports
        for peer in peers:
            await peer.close()


# identity


async def test_wrong_peer_id_is_a_mismatch_and_dropped(
    node: Node, client: H3PeerClient
) -> None:
    other_id = str(ID.from_pubkey(create_new_key_pair().public_key))
    with pytest.raises(PeerIdentityMismatch):
        await client.fetch(other_id, "127.0.3.1", "GET", "/v2/", {}, 5.0)
    assert client._pool == {}


async def test_peer_presenting_another_identity_is_refused(tmp_path: Path) -> None:
    peer = FaultyPeer(Address("127.0.3.5", 0), {"/v2/": ({}, b"{}")}, "wrong_identity")
    await peer.start()
    peer_client = _client(tmp_path, peer.port)
    try:
        with pytest.raises(PeerIdentityMismatch):
            await peer_client.fetch(peer.peer_id, "127.0.3.5", "GET", "/v2/", {}, 5.0)
        assert peer.requests == []
    finally:
        await peer_client.close()
        await peer.close()


# faults injected by a test peer

BODY = os.urandom(256 << 10)


async def _faulty(
    tmp_path: Path, fault: str | None, fault_at: int = 1000, **kw: Any
) -> tuple[FaultyPeer, H3PeerClient]:
    peer = FaultyPeer(
        Address("127.0.3.6", 0),
        {"/v2/a/b/blobs/x": ({"content-type": "application/octet-stream"}, BODY)},
        fault,
        fault_at,
    )
    await peer.start()
    return peer, _client(tmp_path, peer.port, **kw)


async def test_request_headers_pass_through(tmp_path: Path) -> None:
    peer, peer_client = await _faulty(tmp_path, None)
    sent = {
        "x-peerpull-mirrored": "true",
        "Range": "bytes=0-9",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    try:
        response = await peer_client.fetch(
            peer.peer_id, "127.0.3.6", "GET", "/v2/a/b/blobs/x?ns=docker.io", sent, 5.0
        )
        assert await _body(response) == BODY
        pseudo, headers = peer.requests[0]
        assert pseudo[":path"] == "/v2/a/b/blobs/x?ns=docker.io"
        assert headers["x-peerpull-mirrored"] == "true"
        assert headers["range"] == "bytes=0-9"
        assert headers["traceparent"] == sent["traceparent"]
    finally:
        await peer_client.close()
        await peer.close()


@pytest.mark.parametrize("fault", ["close_mid_stream", "short", "long"])
async def test_broken_bodies_raise_stream_broken(tmp_path: Path, fault: str) -> None:
    peer, peer_client = await _faulty(tmp_path, fault, 100_000)
    try:
        response = await peer_client.fetch(
            peer.peer_id, "127.0.3.6", "GET", "/v2/a/b/blobs/x", {}, 5.0
        )
        assert response.status == 200
        with pytest.raises(PeerStreamBroken):
            await _body(response)
        await response.close()
    finally:
        await peer_client.close()
        await peer.close()


async def test_corrupt_body_arrives_with_right_length(tmp_path: Path) -> None:
    peer, peer_client = await _faulty(tmp_path, "corrupt", 5000)
    try:
        response = await peer_client.fetch(
            peer.peer_id, "127.0.3.6", "GET", "/v2/a/b/blobs/x", {}, 5.0
        )
        body = await _body(response)
        assert len(body) == len(BODY) and body != BODY
        assert body[5000] == BODY[5000] ^ 0xFF
    finally:
        await peer_client.close()
        await peer.close()


async def test_stalled_headers_time_out_as_unavailable(tmp_path: Path) -> None:
    peer, peer_client = await _faulty(tmp_path, "stall_headers")
    try:
        start = time.monotonic()
        with pytest.raises(PeerUnavailable):
            await peer_client.fetch(
                peer.peer_id, "127.0.3.6", "GET", "/v2/a/b/blobs/x", {}, 0.3
            )
        assert time.monotonic() - start < 0.6
    finally:
        await peer_client.close()
        await peer.close()


async def test_stalled_body_breaks_after_idle_timeout(tmp_path: Path) -> None:
    peer, peer_client = await _faulty(
        tmp_path, "stall_body", 4096, body_idle_timeout_s=0.3
    )
    try:
        response = await peer_client.fetch(
            peer.peer_id, "127.0.3.6", "GET", "/v2/a/b/blobs/x", {}, 5.0
        )
        start = time.monotonic()
        with pytest.raises(PeerStreamBroken, match="no body bytes"):
            await _body(response)
        assert time.monotonic() - start < 1.0
    finally:
        await peer_client.close()
        await peer.close()


async def test_silent_udp_port_is_unavailable_in_time(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.3.7", 0))
        peer_client = _client(tmp_path, silent.getsockname()[1])
        try:
            start = time.monotonic()
            with pytest.raises(PeerUnavailable):
                await peer_client.fetch(
                    "12D3KooWxxx", "127.0.3.7", "GET", "/v2/", {}, 0.4
                )
            assert time.monotonic() - start < 0.8
            assert peer_client._pool == {}
        finally:
            await peer_client.close()


# backpressure, abort and memory


async def test_send_gate_bounds_queue_and_abort_releases_blob(
    node: Node, client: H3PeerClient
) -> None:
    path = node.store.root / "blobs" / "sha256"
    path.mkdir(parents=True, exist_ok=True)
    fake = "ab" * 32
    with open(path / fake, "wb") as f:
        f.truncate(256 << 20)
    response = await client.fetch(
        node.peer_id, "127.0.3.1", "GET", f"/v2/a/b/blobs/sha256:{fake}", {}, 5.0
    )
    assert node.store.open_blobs == 1

    # a stalled reader: the server stops reading at the watermark
    read_while_stalled = -1
    for _ in range(20):
        if node.store.chunks_read == read_while_stalled:
            break
        read_while_stalled = node.store.chunks_read
        await asyncio.sleep(0.5)
    assert node.store.chunks_read == read_while_stalled, "server kept reading"
    assert read_while_stalled * (1 << 20) < RECEIVE_HIGH_BYTES + (24 << 20)

    # the client closes mid-body: the stream is reset and the blob released
    await response.close()
    for _ in range(100):
        if node.store.open_blobs == 0:
            break
        await asyncio.sleep(0.02)
    assert node.store.open_blobs == 0
    response = await client.fetch(node.peer_id, "127.0.3.1", "GET", "/v2/", {}, 5.0)
    assert response.status == 200
    assert client.connections_opened == 1


async def test_send_buffer_size_reads_the_queue(node: Node) -> None:
    engine = engines.load_engine("aioquic")
    config = engine.QuicConfiguration(is_client=True, alpn_protocols=engine.H3_ALPN)
    quic = engine.QuicConnection(configuration=config)
    quic.connect(("127.0.3.1", node.server.port), now=time.monotonic())
    stream_id = quic.get_next_available_stream_id()
    quic.send_stream_data(stream_id, b"x" * 5000)
    assert engine.send_buffer_size(quic, stream_id) == 5000
    assert engine.send_buffer_size(quic, 999) == 0


def test_engine_names_and_datagram_sizes() -> None:
    assert engines.load_engine("auto").name in ("aioquic", "qh3")
    with pytest.raises(ValueError, match="'quiche'"):
        engines.load_engine("quiche")
    if importlib.util.find_spec("qh3") is None:
        with pytest.raises(ValueError, match="'qh3' is not installed"):
            engines.load_engine("qh3")
    lo_mtu = int(Path("/sys/class/net/lo/mtu").read_text())
    assert engines.datagram_size("auto", "127.0.3.1") == min(
        lo_mtu - 28, engines.MAX_DATAGRAM
    )
    assert engines.datagram_size(8952, "127.0.0.1") == 8952
    assert engines.datagram_size("1350", "::1") == 1350
    for bad in (1199, engines.MAX_DATAGRAM + 1, "big"):
        with pytest.raises(ValueError):
            engines.datagram_size(bad, "127.0.0.1")


async def test_server_rss_stays_bounded_for_a_slow_reader(tmp_path: Path) -> None:
    blob = tmp_path / "content" / "blobs" / "sha256" / ("cd" * 32)
    blob.parent.mkdir(parents=True)
    with open(blob, "wb") as f:
        f.truncate(1 << 30)
    key_dir = tmp_path / "server"
    peer_id = str(ID.from_pubkey(load_or_create(key_dir).public_key))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.component.test_transport",
        str(tmp_path / "content"), str(key_dir), "127.0.3.8",
        stdout=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[2]),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        peer_client = _client(tmp_path, int(line))
        try:
            path = f"/v2/a/b/blobs/sha256:{'cd' * 32}"
            warm = await peer_client.fetch(
                peer_id, "127.0.3.8", "GET", path, {"range": "bytes=0-8388607"}, 5
            )
            assert len(await _body(warm)) == 8 << 20
            base = _rss_kib(process.pid)
            response = await peer_client.fetch(peer_id, "127.0.3.8", "GET", path, {}, 5)
            peak, taken, paced = base, 0, 0
            async for chunk in response:
                taken += len(chunk)
                if taken - paced >= 256 << 10:  # a slow reader, ~12 MiB/s
                    paced = taken
                    await asyncio.sleep(0.02)
                    peak = max(peak, _rss_kib(process.pid))
                if taken > 32 << 20:
                    break
            await asyncio.sleep(1.0)  # then a stalled one
            peak = max(peak, _rss_kib(process.pid))
            await response.close()
            print(f"server RSS {base} KiB, grew {peak - base} KiB")
            assert (peak - base) < 8 << 10, f"server RSS grew {peak - base} KiB"
        finally:
            await peer_client.close()
    finally:
        process.terminate()
        await process.wait()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _serve(argv: Sequence[str]) -> None:
    """Run a TransportServer over a content dir; print its port; wait."""
    content_root, key_dir, host = argv[:3]
    datagram = argv[3] if len(argv) > 3 else "1350"
    store = DirectoryStore(Path(content_root))
    server = TransportServer(
        listen=Address(host, 0),
        key_pair=load_or_create(Path(key_dir)),
        data_dir=Path(key_dir),
        content=LocalContent(RegistryConfig(), store),
        engine=argv[4] if len(argv) > 4 else "aioquic",
        max_datagram_size=datagram,
    )
    await server.start()
    print(server.port, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sys.argv[1:]))
