"""DnsBootstrapper: peers from the A and AAAA records of a headless service.

Each call to `peers()` asks the nameservers afresh (a headless service's
records follow the pods), within `timeout_s` for both families together.
A name that does not resolve, a server that does not answer or refuses
yields an empty list and one debug line: the router simply asks again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

log = logging.getLogger(__name__)

_FAMILIES = (("A", "ip4"), ("AAAA", "ip6"))

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsBootstrapper:
    """Dials up to `limit` addresses per family that `domain` resolves to.

    `nameservers` are `ip`, `ip:port` or `[ipv6]:port` strings; None means
    the system's resolv.conf, whose search list then applies to `domain`.
    """

    def __init__(
        self,
        domain: str,
        port: int,
        nameservers: Sequence[str] | None = None,
        limit: int = 3,
        timeout_s: float = 2.0,
    ) -> None:
        self._domain = domain
        self._port = port
        self._limit = limit
        self._timeout_s = timeout_s
        self._search = nameservers is None
        self._own: frozenset[_IP] = frozenset()
        self._resolver = _resolver(nameservers)
        self._resolver.lifetime = timeout_s

    async def start(self, own_addresses: Sequence[str]) -> None:
        self._own = frozenset(
            ip for ip in map(multiaddr_ip, own_addresses) if ip is not None
        )

    async def peers(self) -> list[str]:
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await asyncio.gather(
                    *(self._lookup(rdtype) for rdtype, _ in _FAMILIES)
                )
        except TimeoutError:
            log.debug("dns bootstrap timed out", extra={"domain": self._domain})
            return []

        addresses: list[str] = []
        errors: list[str] = []
        for (_, proto), result in zip(_FAMILIES, found, strict=True):
            if isinstance(result, dns.exception.DNSException):
                errors.append(str(result))
                continue
            fresh = [ip for ip in result if ip not in self._own]
            chosen = random.sample(fresh, min(self._limit, len(fresh)))
            addresses += [f"/{proto}/{ip}/tcp/{self._port}" for ip in chosen]
        if not addresses:
            log.debug(
                "dns bootstrap found no peers",
                extra={"domain": self._domain, "errors": errors},
            )
        return addresses

    async def close(self) -> None:
        return None

    async def _lookup(self, rdtype: str) -> list[_IP] | dns.exception.DNSException:
        """The addresses of one record type, or why there are none."""
        try:
            answer = await self._resolver.resolve(
                self._domain, rdtype, search=self._search
            )
        except dns.exception.DNSException as err:
            # NXDOMAIN, NoAnswer, NoNameservers (REFUSED, SERVFAIL), Timeout
            return err
        return [ipaddress.ip_address(rdata.to_text()) for rdata in answer]


def multiaddr_ip(address: str) -> _IP | None:
    """The IP of an `/ip4/…` or `/ip6/…` multiaddr; None for any other form."""
    parts = address.split("/")
    if len(parts) < 3 or parts[0] != "" or parts[1] not in ("ip4", "ip6"):
        return None
    try:
        return ipaddress.ip_address(parts[2])
    except ValueError:
        return None


def parse_nameserver(text: str) -> dns.nameserver.Do53Nameserver:
    """`ip`, `ip:port` or `[ipv6]:port` as a plain (UDP, TCP fallback) server."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest.removeprefix(":")) if rest else 53
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    return dns.nameserver.Do53Nameserver(str(ipaddress.ip_address(host)), port)


def _resolver(nameservers: Sequence[str] | None) -> dns.asyncresolver.Resolver:
    """A resolver on `nameservers`, or configured from /etc/resolv.conf."""
    if nameservers is None:
        return dns.asyncresolver.Resolver()
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [parse_nameserver(ns) for ns in nameservers]
    return resolver
