"""Validate and normalise mirror targets and mirrored registry names.

A mirror target is `http(s)://host[:port]`: no user info, path, query or
fragment. An unbracketed IPv6 address is bracketed on the way in; it must then
carry a port (`http://fd00::1:5000`), because the chart builds targets as
`http://$(NODE_IP):<port>` and the last group is read as the port.

A mirrored registry is a URL like the targets, or a bare host (`docker.io`,
read as `https://docker.io`), or the wildcard `_default` / `*`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

DEFAULT_REGISTRY = "_default"
TARGETS_FLAG = "--mirror-targets"
REGISTRIES_FLAG = "--mirrored-registries"

_WILDCARDS = frozenset({DEFAULT_REGISTRY, "*"})
_SCHEMES = frozenset({"http", "https"})
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DOCKER_HUB = "docker.io"
_DOCKER_HUB_SERVER = "registry-1.docker.io"


class ConfigurationError(ValueError):
    """The mirror configuration inputs or the files it builds on are invalid."""


def parse_mirror_targets(value: str) -> tuple[str, ...]:
    """Split a comma list of mirror targets; validate, normalise and dedupe it."""
    targets = normalise_targets(_split(value))
    if not targets:
        raise ConfigurationError(f"{TARGETS_FLAG}: at least one target is required")
    return targets


def parse_mirrored_registries(value: str) -> tuple[str, ...]:
    """Split a comma list of registries; validate, normalise and dedupe it."""
    return normalise_registries(_split(value))


def normalise_targets(values: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise mirror targets, keeping the first of duplicates."""
    return _dedupe(values, normalise_target)


def normalise_registries(values: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise registries; two may not share one directory."""
    registries = _dedupe(values, normalise_registry)
    seen: dict[str, str] = {}
    for registry in registries:
        directory = registry_directory(registry)
        if directory in seen:
            raise ConfigurationError(
                f"{REGISTRIES_FLAG}: {seen[directory]} and {registry} "
                f"would share the directory {directory!r}"
            )
        seen[directory] = registry
    return registries


def normalise_target(raw: str) -> str:
    """Return the target as `scheme://host[:port]`, or raise ConfigurationError."""
    if "://" not in raw.strip():
        raise ConfigurationError(
            f"{TARGETS_FLAG}: {raw!r} must be an http:// or https:// URL"
        )
    return _normalise_url(raw, TARGETS_FLAG)


def normalise_registry(raw: str) -> str:
    """Return `_default` for a wildcard, else the registry as `scheme://host[:port]`."""
    value = raw.strip()
    if value in _WILDCARDS:
        return DEFAULT_REGISTRY
    if "://" not in value:
        value = f"https://{value}"
    return _normalise_url(value, REGISTRIES_FLAG, shown=raw)


def registry_directory(registry: str) -> str:
    """Return the certs.d directory name of a normalised registry: its host[:port]."""
    if registry == DEFAULT_REGISTRY:
        return DEFAULT_REGISTRY
    return registry.split("://", 1)[1]


def registry_server(registry: str) -> str | None:
    """Return the upstream `server` of a normalised registry; None for `_default`."""
    if registry == DEFAULT_REGISTRY:
        return None
    scheme, authority = registry.split("://", 1)
    if authority == _DOCKER_HUB:
        return f"{scheme}://{_DOCKER_HUB_SERVER}"
    return registry


def _split(value: str) -> list[str]:
    """Split a comma list, dropping empty items."""
    return [item.strip() for item in value.split(",") if item.strip()]


def _dedupe(values: Iterable[str], normalise: Callable[[str], str]) -> tuple[str, ...]:
    """Normalise each value and keep the first of equal results, in order."""
    return tuple(dict.fromkeys(normalise(value) for value in values))


def _normalise_url(raw: str, flag: str, shown: str | None = None) -> str:
    """Parse `scheme://host[:port][/]` strictly and rebuild it in canonical form."""
    shown = raw if shown is None else shown
    scheme, _, rest = raw.strip().partition("://")
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise ConfigurationError(f"{flag}: {shown!r} must use http or https")
    if rest.endswith("/"):
        rest = rest[:-1]
    if any(char in rest for char in "/?#"):
        raise ConfigurationError(
            f"{flag}: {shown!r} must not have a path, query or fragment"
        )
    if "@" in rest:
        raise ConfigurationError(f"{flag}: {shown!r} must not carry user info")

    host, port = _split_authority(rest, flag, shown)
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def _split_authority(rest: str, flag: str, shown: str) -> tuple[str, str]:
    """Split host[:port], bracketing IPv6; raise ConfigurationError on bad parts."""
    if rest.startswith("["):
        address, bracket, port = rest[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ConfigurationError(f"{flag}: {shown!r} has a malformed IPv6 host")
        host, port = address, port[1:]
        _check_ipv6(host, flag, shown)
    elif rest.count(":") > 1:
        host, _, port = rest.rpartition(":")
        _check_ipv6(host, flag, shown)
    else:
        host, _, port = rest.partition(":")
        _check_hostname(host, flag, shown)

    if ":" in host:
        host = f"[{ipaddress.IPv6Address(host).compressed}]"
    if port or rest.endswith(":"):
        _check_port(port, flag, shown)
        port = str(int(port))
    return host.lower(), port


def _check_ipv6(host: str, flag: str, shown: str) -> None:
    """Raise unless host is an IPv6 address."""
    try:
        ipaddress.IPv6Address(host)
    except ValueError as error:
        raise ConfigurationError(
            f"{flag}: {shown!r} has an invalid IPv6 address (an unbracketed "
            "IPv6 host must end with :port)"
        ) from error


def _check_hostname(host: str, flag: str, shown: str) -> None:
    """Raise unless host is a DNS name or an IPv4 address."""
    labels = host.lower().split(".")
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(x) for x in labels):
        raise ConfigurationError(f"{flag}: {shown!r} has an invalid host {host!r}")


def _check_port(port: str, flag: str, shown: str) -> None:
    """Raise unless port is a decimal number from 1 to 65535."""
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigurationError(f"{flag}: {shown!r} has an invalid port {port!r}")
