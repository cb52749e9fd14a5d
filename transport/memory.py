"""MemoryPeerClient: a PeerClient over in-process LocalContent, for tests of
the mirror path. Each peer id maps to the LocalContent that peer serves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from urllib.parse import parse_qs, urlsplit

from daemon.registry.local import Answer, LocalContent
from transport.peer import PeerStreamBroken, PeerUnavailable


class MemoryPeerResponse:
    """A peer's Answer as a PeerResponse; enforces Content-Length like the real one."""

    def __init__(self, answer: Answer, head: bool) -> None:
        self.status = answer.status
        self.headers = {name.lower(): value for name, value in answer.headers.items()}
        self._answer = answer
        self._head = head

    async def _body(self) -> AsyncIterator[bytes]:
        if self._head:
            return
        expected = int(self.headers.get("content-length", "0"))
        received = 0
        if self._answer.blob is not None:
            chunks = self._answer.blob.chunks(self._answer.first, self._answer.length)
            async for chunk in chunks:
                received += len(chunk)
                yield chunk
        elif self._answer.body:
            received = len(self._answer.body)
            yield self._answer.body
        if received != expected:
            raise PeerStreamBroken(f"body of {received} bytes, announced {expected}")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._body()

    async def close(self) -> None:
        await self._answer.close()


class MemoryPeerClient:
    """Fetches from the LocalContent of each peer id; unknown peers are down."""

    def __init__(self, peers: Mapping[str, LocalContent]) -> None:
        self.peers = dict(peers)
        self.requests: list[tuple[str, str, str, dict[str, str]]] = []

    async def fetch(
        self,
        peer_id: str,
        host: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> MemoryPeerResponse:
        self.requests.append((peer_id, method, path_qs, dict(headers)))
        content = self.peers.get(peer_id)
        if content is None:
            raise PeerUnavailable(f"peer {peer_id} is not reachable")
        url = urlsplit(path_qs)
        namespaces = parse_qs(url.query).get("ns", [])
        answer = await content.answer(
            method, url.path, namespaces, headers.get("range")
        )
        return MemoryPeerResponse(answer, method == "HEAD")

    async def close(self) -> None:
        return None
