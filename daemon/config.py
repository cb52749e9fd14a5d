"""The daemon's one frozen configuration object and its defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from daemon.values import Address
from ebpf.watcher import WatcherKind

BootstrapKind = Literal["static", "dns", "kubernetes"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


@dataclass(frozen=True)
class RegistryConfig:
    """Everything `peerpull registry` needs; units are in the field names."""

    registry_addr: Address = Address("", 5000)
    router_addr: Address = Address("", 5001)
    transport_addr: Address = Address("", 5002)
    metrics_addr: Address = Address("", 9090)
    containerd_sock: Path = Path("/run/containerd/containerd.sock")
    containerd_namespace: str = "k8s.io"
    containerd_content_path: Path = Path(
        "/var/lib/containerd/io.containerd.content.v1.content"
    )
    data_dir: Path = Path("/var/lib/peerpull")
    bootstrap_kind: BootstrapKind = "static"
    static_bootstrap_peers: tuple[str, ...] = ()
    dns_bootstrap_domain: str = ""
    dns_bootstrap_nameservers: tuple[str, ...] = ()
    leader_election_namespace: str = "peerpull"
    leader_election_name: str = "peerpull-leader-election"
    mirror_resolve_timeout_s: float = 0.020
    mirror_resolve_retries: int = 3
    mirrored_registries: tuple[str, ...] = ()
    registry_filters: tuple[re.Pattern[str], ...] = field(default=())
    resolve_tags: bool = True
    transport_max_datagram_size: str = "auto"
    quic_engine: str = "auto"
    content_watcher: WatcherKind = "auto"
    record_ttl_s: float = 600.0
    refresh_interval_s: float = 540.0
    log_level: LogLevel = "INFO"

    def mirrors(self, registry: str) -> bool:
        """Tell whether requests for this registry are served at all."""
        wildcard = (
            not self.mirrored_registries or "_default" in self.mirrored_registries
        )
        return wildcard or registry in self.mirrored_registries

    def filtered(self, key: str) -> bool:
        """Tell whether `registry/repo[:tag]` matches a registry filter."""
        return any(pattern.search(key) for pattern in self.registry_filters)
