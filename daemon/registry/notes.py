"""What a request's handling learned, kept on the request for its log line."""

from __future__ import annotations

from aiohttp import web

SOURCE = web.RequestKey("peerpull_source", str)  # local, peer, or none (a miss)
PEER = web.RequestKey("peerpull_peer", str)  # the peer id that served it
