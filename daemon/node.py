"""The composition root of `peerpull registry`: one labelled stage after another.

Lifecycle: connect to containerd, pick how blobs are read, start the
registry and metrics listeners, serve until SIGTERM or SIGINT, then drain
open requests and close everything.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.config import RegistryConfig
from daemon.registry.server import RegistryApi
from daemon.state.containerd import ContainerdClient, ContainerdError
from daemon.state.store import ContainerdStore
from daemon.values import Address

log = logging.getLogger(__name__)

CONTAINERD_CONNECT_TIMEOUT_S = 5.0
# A local containerd answers in about a millisecond; a stalled one must not
# stall containerd's own pulls behind it (containerd has no response timeout).
CONTAINERD_CALL_TIMEOUT_S = 2.0
READY_CHECK_TIMEOUT_S = 1.0
READY_CACHE_S = 1.0
# Idle and half-sent connections are closed after this; bounds slow clients.
KEEPALIVE_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0


class StartupFailed(Exception):
    """The daemon cannot start; the message is one line naming the cause."""


class ContainerdHealth:
    """Answers 'can containerd be reached?' at most once a second."""

    def __init__(self, client: ContainerdClient) -> None:
        self._client = client
        self._checked_at = float("-inf")
        self._healthy = False

    async def ready(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= READY_CACHE_S:
            self._checked_at = now
            try:
                async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
                    await self._client.version()
                self._healthy = True
            except (ContainerdError, TimeoutError):
                self._healthy = False
        return self._healthy


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one (many connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def metrics_application() -> web.Application:
    """A tiny app serving the process's Prometheus metrics on `/metrics`."""

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def start_site(app: web.Application, address: Address) -> web.AppRunner:
    """Listen for `app` on `address`; an empty host means every interface."""
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, address.host or None, address.port, backlog=1024)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise StartupFailed(f"cannot listen on {address}: {err.strerror}") from err
    return runner


async def wait_for_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")


async def serve(config: RegistryConfig) -> None:
    """Run the registry daemon until a signal arrives."""
    raise_open_file_limit()

    # containerd
    client = ContainerdClient(
        str(config.containerd_sock),
        config.containerd_namespace,
        call_timeout_s=CONTAINERD_CALL_TIMEOUT_S,
    )
    try:
        version = await client.connect(timeout_s=CONTAINERD_CONNECT_TIMEOUT_S)
    except ContainerdError as err:
        raise StartupFailed(str(err)) from err
    log.info(
        "containerd connected", extra={"version": version, "socket": client.socket_path}
    )

    # content store
    try:
        files, reason = await ContainerdStore.usable_content_path(
            client, config.containerd_content_path
        )
    except ContainerdError as err:
        raise StartupFailed(str(err)) from err
    store = ContainerdStore(client, files)
    log.info(
        "content store",
        extra={
            "reads": "file" if files else "grpc",
            "reason": reason,
            "path": str(config.containerd_content_path),
        },
    )

    # listeners
    runners: list[web.AppRunner] = []
    try:
        health = ContainerdHealth(client)
        api = RegistryApi(config, store, health.ready)
        runners.append(await start_site(api.application(), config.registry_addr))
        runners.append(await start_site(metrics_application(), config.metrics_addr))
        log.info(
            "serving",
            extra={
                "registry": [str(a) for a in runners[0].addresses],
                "metrics": [str(a) for a in runners[1].addresses],
            },
        )
        await wait_for_signal()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await client.close()
