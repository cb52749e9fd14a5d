"""The one place where py-libp2p 0.8.1's module constants and loggers are set.

py-libp2p exposes these only as module globals, read at call time, so they
apply to the whole process: run one DhtRouter per process (the daemon does).
Patched, and why (measured in notes/py-libp2p-dht.md):

- `provider_store.PROVIDER_RECORD_EXPIRATION_INTERVAL` (48 h): our record
  TTL (`--record-ttl`, 10 min); every node must use the same value.
- `provider_store.PROVIDER_RECORD_REPUBLISH_INTERVAL` (22 h): infinity, so
  the DHT's 600 s maintenance loop never republishes; DhtNode republishes
  its own advertised set, which `withdraw` shrinks first.
- `peer_routing.QUERY_TIMEOUT` and `provider_store.QUERY_TIMEOUT` (10 s,
  each module imports the name): our query timeout (~1 s), so a hung peer
  costs about that much, not 20 s, per lookup.

Per-instance settings (the ADD_PROVIDER rate limit and the inbound stream
limiter) are set in `daemon.routing.node`, next to the DHT they belong to.
"""

from __future__ import annotations

import logging
import math

from libp2p.kad_dht import peer_routing, provider_store

LIBP2P_LOGGER = "libp2p"


def apply(record_ttl_s: float, query_timeout_s: float) -> None:
    """Set py-libp2p's record lifetime, republish and query timeout globals."""
    provider_store.PROVIDER_RECORD_EXPIRATION_INTERVAL = record_ttl_s  # type: ignore[assignment]
    provider_store.PROVIDER_RECORD_REPUBLISH_INTERVAL = math.inf  # type: ignore[assignment]
    provider_store.QUERY_TIMEOUT = query_timeout_s  # type: ignore[attr-defined,assignment]
    peer_routing.QUERY_TIMEOUT = query_timeout_s  # type: ignore[attr-defined,assignment]


def quiet_logs(level: int = logging.CRITICAL) -> None:
    """Route py-libp2p's records into our handlers, at `level`.

    py-libp2p logs routine connection churn (a peer restarting, a probe to
    learn a peer id, a closed stream) as ERROR, many lines a second at 30
    nodes; our own modules log what matters about peers.
    """
    for name in list(logging.Logger.manager.loggerDict):
        child = logging.getLogger(name)
        if name.startswith(LIBP2P_LOGGER + "."):
            # some modules set their own level at import (auto_connector: INFO)
            child.handlers.clear()
            child.propagate = True
            child.setLevel(logging.NOTSET)
    logger = logging.getLogger(LIBP2P_LOGGER)
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(level)
