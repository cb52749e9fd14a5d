"""The composition root of `peerpull registry`: one labelled stage after another.

Lifecycle: connect to containerd, pick how blobs are read, start the
registry and metrics listeners, serve until SIGTERM or SIGINT, then drain
open requests and close everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import tempfile
import time
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.config import RegistryConfig
from daemon.observability.metrics import ROUTER_PEERS
from daemon.registry.local import LocalContent
from daemon.registry.mirror import PeerMirror
from daemon.registry.server import RegistryApi
from daemon.routing.bootstrap import Bootstrapper, StaticBootstrapper
from daemon.routing.dht import DhtRouter
from daemon.routing.identity import IdentityError, load_or_create
from daemon.routing.router import Router
from daemon.state.containerd import ContainerdClient, ContainerdError
from daemon.state.store import ContainerdStore
from daemon.state.tracker import StateTracker
from daemon.values import Address
from ebpf.errors import EbpfUnavailable
from ebpf.pid import PidUnknown, socket_owner_pid
from ebpf.watcher import ContentWatcher, open_watcher
from transport.client import H3PeerClient
from transport.server import TransportServer

log = logging.getLogger(__name__)

CONTAINERD_CONNECT_TIMEOUT_S = 5.0
# A local containerd answers in about a millisecond; a stalled one must not
# stall containerd's own pulls behind it (containerd has no response timeout).
CONTAINERD_CALL_TIMEOUT_S = 2.0
READY_CHECK_TIMEOUT_S = 1.0
READY_CACHE_S = 1.0
# Idle and half-sent connections are closed after this; bounds slow clients.
KEEPALIVE_TIMEOUT_S = 30.0
# In-flight requests get this long to finish on SIGTERM; containerd retries
# a cut download elsewhere, so a stalled reader must not hold the exit.
SHUTDOWN_TIMEOUT_S = 2.0
PEERS_GAUGE_PERIOD_S = 10.0
DEBUG_RESOLVE_TIMEOUT_S = 2.0
# A killed peer sends no QUIC close: a body silent this long is broken and
# resumed from another peer.
PEER_BODY_IDLE_TIMEOUT_S = 3.0
DEBUG_RESOLVE_COUNT = 10


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


def metrics_application(router: Router) -> web.Application:
    """The operator's port: Prometheus `/metrics` and `/debug/resolve?key=`."""

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def resolve(request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        if not key or len(key) > 512:
            return web.json_response(
                {"error": "key required (at most 512 chars)"}, status=400
            )
        peers = []
        started = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DEBUG_RESOLVE_TIMEOUT_S):
                async for peer in router.resolve(key, DEBUG_RESOLVE_COUNT):
                    peers.append({"peer_id": peer.peer_id, "host": peer.host})
        seconds = time.perf_counter() - started
        return web.json_response({"key": key, "peers": peers, "seconds": seconds})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/resolve", resolve)
    return app


async def start_site(
    app: web.Application, address: Address, flag: str
) -> web.AppRunner:
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
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise StartupFailed(f"{flag}: cannot listen on {address}: {reason}") from err
    return runner


async def wait_for_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")


def make_bootstrapper(config: RegistryConfig) -> Bootstrapper:
    """The bootstrapper `--bootstrap-kind` names, configured from its flags."""
    if config.bootstrap_kind == "dns":
        from daemon.routing.dns import DnsBootstrapper

        return DnsBootstrapper(
            config.dns_bootstrap_domain,
            config.router_addr.port,
            nameservers=config.dns_bootstrap_nameservers or None,
        )
    if config.bootstrap_kind == "kubernetes":
        from daemon.routing.lease import KubernetesBootstrapper

        return KubernetesBootstrapper(
            config.leader_election_namespace,
            config.leader_election_name,
            identity=os.environ.get("NODE_NAME") or socket.gethostname(),
        )
    return StaticBootstrapper(config.static_bootstrap_peers)


class Readiness:
    """Ready when containerd answers and the router has joined the cluster."""

    def __init__(self, containerd: ContainerdHealth, router: Router) -> None:
        self._containerd = containerd
        self._router = router

    async def ready(self) -> bool:
        return await self._router.ready() and await self._containerd.ready()


async def watch_router_peers(router: DhtRouter) -> None:
    """Keep the peers gauge current."""
    while True:
        ROUTER_PEERS.set(await router.peer_count())
        await asyncio.sleep(PEERS_GAUGE_PERIOD_S)


async def connect_containerd(config: RegistryConfig) -> ContainerdClient:
    """A connected containerd client, or StartupFailed naming the socket."""
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
    return client


async def open_store(
    client: ContainerdClient, config: RegistryConfig
) -> ContainerdStore:
    """The content store, reading files when the content path allows it."""
    try:
        files, reason = await ContainerdStore.usable_content_path(
            client, config.containerd_content_path
        )
    except ContainerdError as err:
        raise StartupFailed(str(err)) from err
    log.info(
        "content store",
        extra={
            "reads": "file" if files else "grpc",
            "reason": reason,
            "path": str(config.containerd_content_path),
        },
    )
    return ContainerdStore(client, files)


async def start_content_watcher(
    config: RegistryConfig, client: ContainerdClient
) -> ContentWatcher:
    """The eBPF watcher where it can run, else inotify; says which, and why, once."""
    try:
        pid: int | None = socket_owner_pid(client.socket_path)
    except PidUnknown:
        pid = None
    try:
        root = await client.content_root()
    except ContainerdError:
        root = None
    content_root = Path(root) if root else config.containerd_content_path
    try:
        watcher, reason = await open_watcher(config.content_watcher, content_root, pid)
    except EbpfUnavailable as err:
        raise StartupFailed(f"--content-watcher=ebpf: {err}") from err
    log.info("content watcher", extra={"kind": watcher.kind, "reason": reason})
    return watcher


async def until_stopped(background: list[asyncio.Task[None]]) -> None:
    """Wait for SIGTERM/SIGINT; a background task that dies ends the daemon."""
    signal_task = asyncio.create_task(wait_for_signal())
    done, _ = await asyncio.wait(
        [signal_task, *background], return_when=asyncio.FIRST_COMPLETED
    )
    if signal_task not in done:
        signal_task.cancel()
        failed = next(iter(done))
        raise StartupFailed(f"{failed.get_name()} stopped: {failed.exception()!r}")


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def check_data_dir(data_dir: Path) -> None:
    """The data dir and its spool must be writable directories, or say so now."""
    spool = data_dir / "spool"
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=spool):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise StartupFailed(
            f"--data-dir {data_dir}: {reason} ({err.filename})"
        ) from err


async def serve(config: RegistryConfig) -> None:
    """Run the registry daemon until a signal arrives."""
    raise_open_file_limit()
    check_data_dir(config.data_dir)
    async with contextlib.AsyncExitStack() as stack:
        # containerd and its content
        client = await connect_containerd(config)
        stack.push_async_callback(client.close)
        store = await open_store(client, config)

        # router
        router = DhtRouter(
            listen=config.router_addr,
            data_dir=config.data_dir,
            bootstrapper=make_bootstrapper(config),
            record_ttl_s=config.record_ttl_s,
        )
        try:
            await router.start()
        except IdentityError as err:
            raise StartupFailed(f"--data-dir: {err}") from err
        except OSError as err:
            raise StartupFailed(
                f"router cannot start on {config.router_addr}: {err}"
            ) from err
        stack.push_async_callback(router.close)
        log.info(
            "router started",
            extra={"peer_id": router.peer_id, "addresses": router.addresses},
        )

        # state tracker and gauges
        tracker = StateTracker(
            client,
            store,
            router,
            serves=lambda registry, key: (
                config.mirrors(registry) and not config.filtered(key)
            ),
            refresh_interval_s=config.refresh_interval_s,
            unrestricted=not config.mirrored_registries and not config.registry_filters,
        )
        watcher = await start_content_watcher(config, client)
        stack.push_async_callback(watcher.close)
        background = [
            asyncio.create_task(tracker.run(), name="state tracker"),
            asyncio.create_task(tracker.follow(watcher), name="content watcher"),
            asyncio.create_task(watch_router_peers(router), name="peers gauge"),
        ]
        stack.push_async_callback(cancel_all, background)

        # peer transport: serve local content to peers, fetch from them
        local = LocalContent(config, store)
        key_pair = load_or_create(config.data_dir)
        transport = TransportServer(
            listen=config.transport_addr,
            key_pair=key_pair,
            data_dir=config.data_dir,
            content=local,
            engine=config.quic_engine,
            max_datagram_size=config.transport_max_datagram_size,
        )
        try:
            await transport.start()
        except (OSError, ValueError) as err:
            raise StartupFailed(
                f"transport cannot start on {config.transport_addr}: {err}"
            ) from err
        stack.push_async_callback(transport.close)
        peers = H3PeerClient(
            bind_host=config.transport_addr.host or "0.0.0.0",
            port=config.transport_addr.port,
            key_pair=key_pair,
            data_dir=config.data_dir,
            engine=config.quic_engine,
            max_datagram_size=config.transport_max_datagram_size,
            body_idle_timeout_s=PEER_BODY_IDLE_TIMEOUT_S,
        )
        stack.push_async_callback(peers.close)
        spool = config.data_dir / "spool"  # blobs from peers, until verified
        mirror = PeerMirror(
            router,
            peers,
            spool_dir=spool,
            resolve_timeout_s=config.mirror_resolve_timeout_s,
            resolve_retries=config.mirror_resolve_retries,
            resolve_tags=config.resolve_tags,
        )
        log.info("transport started", extra={"port": transport.port})

        # listeners
        readiness = Readiness(ContainerdHealth(client), router)
        api = RegistryApi(local, readiness.ready, mirror)
        registry = await start_site(
            api.application(), config.registry_addr, "--registry-addr"
        )
        stack.push_async_callback(registry.cleanup)
        metrics = await start_site(
            metrics_application(router), config.metrics_addr, "--metrics-addr"
        )
        stack.push_async_callback(metrics.cleanup)
        log.info(
            "serving",
            extra={
                "registry": [str(a) for a in registry.addresses],
                "metrics": [str(a) for a in metrics.addresses],
            },
        )
        await until_stopped(background)
