"""KubernetesBootstrapper: the holder of a coordination.k8s.io/v1 Lease leads.

Every node campaigns for one Lease; the winner writes its node identity in
`spec.holderIdentity` and its router multiaddr (with `/p2p/<id>`) in the
annotation `peerpull.io/router-address` of the same object, so holder and
address change together in one conditional write. The others dial that
address. Once the routing table has peers the leader is no longer special:
it is only the meeting point for nodes that join later.

The rules live in the sans-IO `Election`; this shell runs them every retry
period in an asyncio task, calling the synchronous `kubernetes` client in
worker threads with a timeout. On `close()` a leader releases the Lease
(empty holder and address, `leaseDurationSeconds` 1, `renewTime` now), so a
follower takes over at its next retry instead of after the lease duration.

Every candidate reads the Lease once per retry period (N nodes make N/2
reads a second at the defaults). RBAC: get, create, update on leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client

from daemon.routing.dns import multiaddr_ip
from daemon.routing.election import Create, Election, LeaseRecord, Write

log = logging.getLogger(__name__)

# TODO(clusters past ~500 nodes): followers could read less often once joined.

ANNOTATION = "peerpull.io/router-address"

T = TypeVar("T")


class LeaseConflict(Exception):
    """The API server refused a write: the Lease changed since it was read."""


class LeaseUnavailable(Exception):
    """The API server could not be reached or answered an error."""


class LeaseMissing(LeaseUnavailable):
    """The Lease does not exist (404)."""


class KubernetesBootstrapper:
    """Peers from a Lease: the current leader's router address.

    `api_client` is owned by the caller; when None, one is built from the
    pod's in-cluster service account at `start()` and closed by `close()`.
    """

    _api: client.CoordinationV1Api

    def __init__(
        self,
        namespace: str,
        name: str,
        identity: str,
        api_client: client.ApiClient | None = None,
        lease_s: int = 10,
        renew_deadline_s: float = 5,
        retry_period_s: float = 2,
    ) -> None:
        if not 0 < retry_period_s < renew_deadline_s:
            raise ValueError("retry period must be positive and below renew deadline")
        self._namespace = namespace
        self._name = name
        self._identity = identity
        self._api_client = api_client
        self._owns_client = api_client is None
        self._lease_s = lease_s
        self._renew_deadline_s = renew_deadline_s
        self._retry_period_s = retry_period_s
        self._election = Election(identity, "", lease_s, renew_deadline_s)
        self._object: client.V1Lease | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        """True while this node holds the Lease within its renew deadline."""
        return self._election.is_leader(time.time())

    async def start(self, own_addresses: Sequence[str]) -> None:
        address = published_address(own_addresses)
        self._election = Election(
            self._identity, address, self._lease_s, self._renew_deadline_s
        )
        if self._api_client is None:
            self._api_client = await asyncio.to_thread(_in_cluster_client)
        self._api = client.CoordinationV1Api(self._api_client)
        self._task = asyncio.create_task(self._campaign(), name="lease-election")

    async def peers(self) -> list[str]:
        address = self._election.leader_address(time.time())
        return [] if address is None else [address]

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        release = self._election.release(time.time())
        if release is not None:
            try:
                self._election.written(await self._write(release))
                log.info("lease released", extra={"lease": self._name})
            except (LeaseConflict, LeaseUnavailable) as err:
                log.warning("lease release failed", extra={"error": str(err)})
        if self._owns_client and self._api_client is not None:
            self._api_client.close()  # type: ignore[no-untyped-call]  # untyped upstream
            self._api_client = None

    async def _campaign(self) -> None:
        """Read, decide and write once per retry period until cancelled."""
        while True:
            was_leader = self.is_leader
            await self._round()
            if self.is_leader != was_leader:
                log.info(
                    "lease acquired" if self.is_leader else "lease lost",
                    extra={"lease": self._name, "identity": self._identity},
                )
            await asyncio.sleep(self._retry_period_s)

    async def _round(self) -> None:
        """One try to acquire or renew; a conflict is answered by a re-read."""
        election = self._election
        try:
            if election.needs_read:
                election.observed(await self._read())
            write = election.next_write(time.time())
            if write is not None:
                election.written(await self._write(write))
        except LeaseConflict:
            election.conflicted()
            try:
                election.observed(await self._read())
            except LeaseUnavailable:
                election.failed()
        except LeaseUnavailable as err:
            election.failed()
            log.debug("lease api failed", extra={"error": str(err)})

    async def _read(self) -> LeaseRecord | None:
        """The Lease as it is now; None when it does not exist."""
        try:
            lease = await self._call(
                self._api.read_namespaced_lease, self._name, self._namespace
            )
        except LeaseMissing:
            self._object = None
            return None
        self._object = lease
        return to_record(lease)

    async def _write(self, write: Write) -> LeaseRecord:
        """Create or conditionally replace the Lease; the stored result."""
        body = to_lease(self._object, write.record, self._name)
        try:
            if isinstance(write, Create):
                lease = await self._call(
                    self._api.create_namespaced_lease, self._namespace, body
                )
            else:
                lease = await self._call(
                    self._api.replace_namespaced_lease,
                    self._name,
                    self._namespace,
                    body,
                )
        except LeaseMissing as err:
            raise LeaseConflict("lease deleted since read") from err
        self._object = lease
        return to_record(lease)

    async def _call(self, method: Callable[..., T], *args: Any) -> T:
        """`method(*args)` in a worker thread, translated and bounded in time."""
        timeout = self._renew_deadline_s
        try:
            async with asyncio.timeout(timeout + 0.5):
                return await asyncio.to_thread(method, *args, _request_timeout=timeout)
        except client.ApiException as err:
            if err.status == 404:
                raise LeaseMissing(str(err.reason)) from err
            if err.status == 409:
                raise LeaseConflict(str(err.reason)) from err
            raise LeaseUnavailable(f"{err.status} {err.reason}") from err
        except Exception as err:  # urllib3, socket, timeout, decoding: all the edge
            raise LeaseUnavailable(repr(err)) from err


def published_address(own_addresses: Sequence[str]) -> str:
    """The router address a leader publishes: a routable one with a peer id."""

    def rank(address: str) -> tuple[bool, bool]:
        ip = multiaddr_ip(address)
        routable = ip is not None and not ip.is_loopback
        return (not routable, "/p2p/" not in address)

    return min(own_addresses, key=rank, default="")


def to_record(lease: client.V1Lease) -> LeaseRecord:
    """The election's view of a Lease object."""
    meta = lease.metadata or client.V1ObjectMeta()
    spec = lease.spec or client.V1LeaseSpec()
    return LeaseRecord(
        holder=spec.holder_identity or "",
        address=(meta.annotations or {}).get(ANNOTATION, ""),
        duration_s=spec.lease_duration_seconds or 0,
        renew_time=_epoch(spec.renew_time),
        acquire_time=_epoch(spec.acquire_time),
        transitions=spec.lease_transitions or 0,
        resource_version=meta.resource_version or "",
    )


def to_lease(
    current: client.V1Lease | None, record: LeaseRecord, name: str
) -> client.V1Lease:
    """`record` written over `current`, keeping others' labels and annotations."""
    meta = client.V1ObjectMeta(name=name)
    if current is not None and current.metadata is not None:
        meta = copy.deepcopy(current.metadata)
    annotations = dict(meta.annotations or {})
    annotations.pop(ANNOTATION, None)
    if record.address:
        annotations[ANNOTATION] = record.address
    meta.annotations = annotations or None
    meta.resource_version = record.resource_version or None
    spec = client.V1LeaseSpec(
        holder_identity=record.holder or None,
        lease_duration_seconds=record.duration_s,
        renew_time=_datetime(record.renew_time),
        acquire_time=_datetime(record.acquire_time),
        lease_transitions=record.transitions,
    )
    return client.V1Lease(
        api_version="coordination.k8s.io/v1", kind="Lease", metadata=meta, spec=spec
    )


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _in_cluster_client() -> client.ApiClient:
    """An ApiClient from the pod's service account (only ever in a cluster)."""
    from kubernetes import config

    configuration = client.Configuration()
    try:
        # untyped upstream
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    except config.ConfigException as err:
        raise LeaseUnavailable(f"no in-cluster configuration: {err}") from err
    return client.ApiClient(configuration)
