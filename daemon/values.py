"""Parsers for flag values: addresses, durations, booleans, lists and regexes.

Each parser takes the raw string and returns the typed value or raises
`ValueError` with a short reason; the CLI adds the flag's name.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DIGITS = re.compile(r"[0-9]+")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_TRUE = {"1", "t", "true", "yes", "y", "on"}
_FALSE = {"0", "f", "false", "no", "n", "off"}


@dataclass(frozen=True)
class Address:
    """A listen address; an empty host means every interface."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(value: str) -> Address:
    """Parse `host:port`, `:port` or `[v6]:port`; port 0 picks a free port."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"{value!r} is not host:port (e.g. :5000 or 127.0.0.1:5000)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        _check_ip(host, version=6)
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 host in brackets, e.g. [::1]:5000")
    elif host and not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{value!r}: {host!r} is not a valid host")
    return Address(host, parse_port(port_text))


def parse_port(value: str) -> int:
    """Parse a TCP/UDP port number (0-65535)."""
    if not _DIGITS.fullmatch(value) or int(value) > 65535:
        raise ValueError(f"{value!r} is not a port (0-65535)")
    return int(value)


def _check_ip(value: str, version: int) -> None:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as err:
        raise ValueError(f"{value!r} is not an IP address") from err
    if ip.version != version:
        raise ValueError(f"{value!r} is not an IPv{version} address")


def parse_duration(value: str) -> float:
    """Parse a Go-style duration (`20ms`, `1.5s`, `1m30s`) into positive seconds."""
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"{value!r} is not a duration (e.g. 20ms, 2s, 10m)")
    if total <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    return total


def parse_bool(value: str) -> bool:
    """Parse true/false, yes/no, on/off, 1/0."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true or false)")


def parse_count(value: str, minimum: int = 0, maximum: int = 1_000_000) -> int:
    """Parse a whole number within [minimum, maximum]."""
    if not _DIGITS.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not a whole number")
    number = int(value)
    if not minimum <= number <= maximum:
        raise ValueError(f"{number} is outside {minimum}..{maximum}")
    return number


def split_list(value: str) -> tuple[str, ...]:
    """Split a comma list, ignoring commas inside (), [] and {} (regex friendly)."""
    items: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(value):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            items.append(value[start:i])
            start = i + 1
    items.append(value[start:])
    return tuple(item.strip() for item in items if item.strip())


def parse_regexes(value: str) -> tuple[re.Pattern[str], ...]:
    """Compile each regex of a comma list."""
    patterns = []
    for item in split_list(value):
        try:
            patterns.append(re.compile(item))
        except re.error as err:
            raise ValueError(f"{item!r} is not a valid regex: {err}") from err
    return tuple(patterns)


def parse_multiaddr(value: str) -> str:
    """Check a TCP multiaddr: /ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>[/p2p/<id>]."""
    parts = value.split("/")
    if len(parts) not in (5, 7) or parts[0] != "" or parts[3] != "tcp":
        raise ValueError(f"{value!r} is not /ip4/<ip>/tcp/<port>[/p2p/<peer id>]")
    proto, host, port = parts[1], parts[2], parts[4]
    if proto == "ip4":
        _check_ip(host, version=4)
    elif proto == "ip6":
        _check_ip(host, version=6)
    elif proto in ("dns", "dns4", "dns6"):
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{value!r}: {host!r} is not a valid DNS name")
    else:
        raise ValueError(f"{value!r}: protocol {proto!r} is not ip4, ip6 or dns")
    if parse_port(port) == 0:
        raise ValueError(f"{value!r}: port 0 cannot be dialled")
    if len(parts) == 7 and (
        parts[5] != "p2p" or not re.fullmatch(r"[1-9A-HJ-NP-Za-km-z]{40,60}", parts[6])
    ):
        raise ValueError(f"{value!r}: expected /p2p/<base58 peer id> at the end")
    return value


def parse_dns_name(value: str) -> str:
    """Check a DNS name (e.g. a headless service's FQDN)."""
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid DNS name")
    return value


def parse_registry_host(value: str) -> str:
    """Normalise a registry given as URL or host into `host[:port]`.

    Docker Hub's aliases all become `docker.io`; `_default` and `*` stay as
    the wildcard `_default`.
    """
    text = value.strip()
    if text in ("_default", "*"):
        return "_default"
    match = re.fullmatch(r"(?:(https?)://)?([^/?#]+)/?", text)
    if not match:
        raise ValueError(
            f"{value!r} is not a registry URL or host (e.g. https://docker.io)"
        )
    host = match.group(2).lower()
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if not _HOSTNAME.fullmatch(name) or (port and parse_port(port) == 0):
        raise ValueError(
            f"{value!r} is not a registry URL or host (e.g. https://docker.io)"
        )
    return canonical_registry(host)


def canonical_registry(host: str) -> str:
    """Map Docker Hub's host aliases to `docker.io`; others are unchanged."""
    if host in ("registry-1.docker.io", "index.docker.io", "docker.io"):
        return "docker.io"
    return host
