"""FakeKubeApi: the coordination.k8s.io/v1 Lease endpoints, in-test, on aiohttp.

No real Kubernetes API server can run on this machine, so this small HTTP
API stands in for one. It keeps what the election depends on: a global,
increasing resourceVersion stamped on every write; create of an existing
name is 409 AlreadyExists; replace of a missing name is 404; replace with a
resourceVersion other than the stored one (or none) is 409 Conflict. Each
check-and-store runs without an await in between, so it is atomic.

Faults for tests: `failing` answers 503 to everything and `hanging` never
answers (until cleared); `failing_agents` and `hanging_agents` do the same
for clients whose User-Agent is in the set; `max_delay_s` delays each
request by a random time before the check-and-store (widens races).
`writes` records every accepted write with the server's wall time and
`conflicts` counts the 409s, for invariant checks.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

PREFIX = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

Json = dict[str, Any]


@dataclass(frozen=True)
class AcceptedWrite:
    """One create or replace the API accepted: when, and the object stored."""

    at: float
    verb: str
    lease: Json


@dataclass
class FakeKubeApi:
    """In-memory Lease store with resourceVersion semantics and fault switches."""

    leases: dict[tuple[str, str], Json] = field(default_factory=dict)
    writes: list[AcceptedWrite] = field(default_factory=list)
    failing: bool = False
    failing_agents: set[str] = field(default_factory=set)
    hanging_agents: set[str] = field(default_factory=set)
    conflicts: int = 0
    hanging: bool = False
    max_delay_s: float = 0.0
    _version: int = 0

    def app(self) -> web.Application:
        """The aiohttp application serving the Lease endpoints."""
        app = web.Application()
        app.router.add_get(PREFIX + "/{name}", self._get)
        app.router.add_post(PREFIX, self._create)
        app.router.add_put(PREFIX + "/{name}", self._replace)
        app.middlewares.append(self._faults)
        return app

    def holder(self, namespace: str, name: str) -> str:
        """The stored holderIdentity, "" when free or absent."""
        lease = self.leases.get((namespace, name), {})
        return str(lease.get("spec", {}).get("holderIdentity") or "")

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        agent = request.headers.get("User-Agent")
        while self.hanging or agent in self.hanging_agents:
            await asyncio.sleep(0.05)
        if self.failing or agent in self.failing_agents:
            return _status(503, "ServiceUnavailable", "injected failure")
        if self.max_delay_s:
            await asyncio.sleep(random.uniform(0, self.max_delay_s))
        response: web.StreamResponse = await handler(request)
        return response

    async def _get(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.leases:
            return _status(404, "NotFound", f"leases {key[1]!r} not found")
        return web.json_response(self.leases[key])

    async def _create(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        body = await request.json()
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return _status(400, "BadRequest", "metadata.name is required")
        if meta.get("resourceVersion"):
            return _status(400, "BadRequest", "resourceVersion set on create")
        if (namespace, name) in self.leases:
            self.conflicts += 1
            return _status(409, "AlreadyExists", f"leases {name!r} already exists")

        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        return self._store(namespace, name, body, "create", 201)

    async def _replace(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        body = await request.json()
        meta = body.setdefault("metadata", {})
        if meta.get("name") != name:
            return _status(400, "BadRequest", "metadata.name does not match")
        stored = self.leases.get((namespace, name))
        if stored is None:
            return _status(404, "NotFound", f"leases {name!r} not found")
        if meta.get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            self.conflicts += 1
            return _status(409, "Conflict", "the object has been modified")

        for kept in ("uid", "creationTimestamp"):
            meta[kept] = stored["metadata"][kept]
        meta["namespace"] = namespace
        return self._store(namespace, name, body, "replace", 200)

    def _store(
        self, namespace: str, name: str, body: Json, verb: str, code: int
    ) -> web.Response:
        """Stamp a new resourceVersion, keep the object and log the write."""
        self._version += 1
        body["metadata"]["resourceVersion"] = str(self._version)
        body.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
        self.leases[(namespace, name)] = body
        self.writes.append(AcceptedWrite(time.time(), verb, copy.deepcopy(body)))
        return web.json_response(body, status=code)


def _status(code: int, reason: str, message: str) -> web.Response:
    """A Kubernetes `Status` error body."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


@asynccontextmanager
async def serve_fake_kube(
    host: str = "127.0.2.3",
) -> AsyncIterator[tuple[FakeKubeApi, str]]:
    """Run a FakeKubeApi on `host` (a free port); yields it and its base URL."""
    api = FakeKubeApi()
    runner = web.AppRunner(api.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield api, f"http://{host}:{port}"
    finally:
        api.hanging = False
        api.hanging_agents.clear()
        await runner.cleanup()
