"""Every Prometheus metric of the daemon, in one place.

Labels are bounded: no digests, no peer ids, and registry names taken from
requests pass through `registry_label`, which caps how many are kept.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

REGISTRY_LABELS_MAX = 64

MIRROR_REQUESTS = Counter(
    "peerpull_mirror_requests_total",
    "Manifest and blob requests: registry, hit or miss, where looked up.",
    ["registry", "cache", "source"],
)
HTTP_REQUEST_DURATION = Histogram(
    "peerpull_http_request_duration_seconds",
    "Time to answer a registry API request, body included.",
    ["handler", "method", "code"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
    ),
)

ADVERTISED_KEYS = Gauge(
    "peerpull_advertised_keys",
    "Keys this node advertises: blob and manifest digests, and tag keys.",
    ["kind"],
)
ADVERTISED_IMAGES = Gauge(
    "peerpull_advertised_images",
    "Images whose content this node advertises, by registry.",
    ["registry"],
)
ROUTER_PEERS = Gauge(
    "peerpull_router_peers",
    "Peers in this node's DHT routing table.",
)
RESOLVE_DURATION = Histogram(
    "peerpull_resolve_duration_seconds",
    "Time to resolve a key to its first peer, or to give up.",
    ["router"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

_registries_seen: set[str] = set()
_registries_lock = threading.Lock()


def registry_label(registry: str | None) -> str:
    """A bounded label for a registry: the name, `none`, or `other` past the cap."""
    if not registry:
        return "none"
    with _registries_lock:
        if registry in _registries_seen:
            return registry
        if len(_registries_seen) < REGISTRY_LABELS_MAX:
            _registries_seen.add(registry)
            return registry
    return "other"


TRANSFER_BYTES = Counter(
    "peerpull_transfer_bytes_total",
    "Body bytes moved between peers, by direction and protocol.",
    ["direction", "protocol"],
)
TRANSFER_DURATION = Histogram(
    "peerpull_transfer_duration_seconds",
    "Time to move one response body between peers, headers to last byte.",
    ["direction"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
PEER_CONNECTIONS = Gauge(
    "peerpull_peer_connections",
    "Open QUIC connections with peers: pooled by the client, accepted by the server.",
    ["role"],
)

EBPF_EVENTS = Counter(
    "peerpull_ebpf_events_total",
    "Blob commits and deletions the eBPF probe delivered, by kind.",
    ["kind"],
)
EBPF_LOST_EVENTS = Counter(
    "peerpull_ebpf_lost_events_total",
    "Probe records dropped in the kernel because the ring buffer was full.",
)
CONTENT_WATCHER_INFO = Gauge(
    "peerpull_content_watcher_info",
    "The content watcher in use: 1 for the active kind (ebpf or inotify).",
    ["kind"],
)
ADVERTISE_LATENCY = Histogram(
    "peerpull_advertise_latency_seconds",
    "Time from a blob's commit (as the content watcher saw it) to its advertisement.",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
