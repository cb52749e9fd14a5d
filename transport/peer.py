"""The PeerClient seam: fetch a registry path from a peer, as a streamed response.

Errors, translated once at the transport boundary:

    PeerError                 any failure talking to a peer
    ├── PeerUnavailable       no response headers: unreachable, refused,
    │   │                     handshake failed, timed out
    │   └── PeerIdentityMismatch   the peer's certificate names another peer id
    └── PeerStreamBroken      the body ended early, was reset, or ran long
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol


class PeerError(Exception):
    """Talking to a peer failed."""


class PeerUnavailable(PeerError):
    """The peer gave no response headers (down, hung, refused, timed out)."""


class PeerIdentityMismatch(PeerUnavailable):
    """The peer reached is not the peer the router named."""


class PeerStreamBroken(PeerError):
    """The response body was cut, reset, or longer than announced."""


class PeerResponse(Protocol):
    """Status and headers of a peer's answer, and its body as a stream.

    Header names are lowercase. Iterating yields body chunks and raises
    PeerStreamBroken if the body does not end exactly at Content-Length.
    `close()` ends the exchange early (resetting the stream) or releases it.
    """

    status: int
    headers: Mapping[str, str]

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk."""

    async def close(self) -> None:
        """Release the exchange; idempotent."""


class PeerClient(Protocol):
    """Fetches from peers; keeps connections to them for reuse."""

    async def fetch(
        self,
        peer_id: str,
        host: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> PeerResponse:
        """Send one request to peer `peer_id` at `host`; return once headers arrive.

        `timeout_s` bounds connecting plus the wait for response headers;
        past it, or on any failure before headers, PeerUnavailable.
        """

    async def close(self) -> None:
        """Close every connection."""
