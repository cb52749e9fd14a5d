"""DnsBootstrapper against a real dnsmasq on 127.0.2.1 that never forwards.

dnsmasq runs with `--no-resolv` and no `--server`, so it has no upstream:
it answers from its `--host-record`s, NXDOMAIN inside `peerpull.test` and
REFUSED elsewhere. The system resolver is never used here.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from daemon.routing.dns import DnsBootstrapper, multiaddr_ip, parse_nameserver

DNSMASQ = shutil.which("dnsmasq") or shutil.which("/usr/sbin/dnsmasq")
pytestmark = pytest.mark.skipif(
    DNSMASQ is None, reason="dnsmasq not installed (apt-get install dnsmasq-base)"
)

HOST = "127.0.2.1"
SILENT_HOST = "127.0.2.2"
PORT = 4001
MANY_V4 = [f"127.0.2.{n}" for n in range(11, 16)]
RECORDS = {
    "many.peerpull.test": (MANY_V4, []),
    "dual.peerpull.test": (["127.0.2.21"], ["fd00::21", "fd00::22"]),
    "v6only.peerpull.test": ([], ["fd00::31"]),
}


@dataclass(frozen=True)
class Dnsmasq:
    """A running dnsmasq: where to ask it."""

    nameserver: str


def _free_udp_tcp_port(host: str) -> int:
    """A port free for both UDP and TCP on `host` (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _host_records() -> list[str]:
    """One `--host-record` per address (dnsmasq merges them per name)."""
    flags = []
    for name, (v4s, v6s) in RECORDS.items():
        flags += [f"--host-record={name},{ip}" for ip in v4s + v6s]
    return flags


def _answers(port: int) -> bool:
    """Whether something answers a DNS query on HOST:port over UDP."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(query, (HOST, port))
        try:
            return sock.recv(512)[:2] == b"\xab\xcd"
        except OSError:
            return False


@pytest.fixture
def dnsmasq() -> Iterator[Dnsmasq]:
    """dnsmasq on 127.0.2.1, local records only, stopped after the test."""
    assert DNSMASQ is not None
    port = _free_udp_tcp_port(HOST)
    process = subprocess.Popen(
        [
            DNSMASQ,
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file",
            "--no-resolv",
            "--no-hosts",
            f"--port={port}",
            f"--listen-address={HOST}",
            "--bind-interfaces",
            "--local=/peerpull.test/",
            "--log-facility=-",
            "--log-queries",
            *_host_records(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 5
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                _, err = process.communicate(timeout=5)
                pytest.fail(f"dnsmasq did not start: {err.decode(errors='replace')}")
        yield Dnsmasq(nameserver=f"{HOST}:{port}")
    finally:
        process.terminate()
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """A UDP socket that receives DNS queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((SILENT_HOST, 0))
        yield f"{SILENT_HOST}:{sock.getsockname()[1]}"


def _ips(addresses: list[str]) -> set[str]:
    return {str(multiaddr_ip(a)) for a in addresses}


async def test_several_a_records_up_to_limit(dnsmasq: Dnsmasq) -> None:
    boot = DnsBootstrapper("many.peerpull.test", PORT, [dnsmasq.nameserver], limit=3)
    await boot.start([])

    peers = await boot.peers()

    assert len(peers) == 3
    assert _ips(peers) <= set(MANY_V4)
    assert all(p.startswith("/ip4/") and p.endswith(f"/tcp/{PORT}") for p in peers)

    everyone = DnsBootstrapper("many.peerpull.test", PORT, [dnsmasq.nameserver], 10)
    assert sorted(await everyone.peers()) == sorted(
        f"/ip4/{ip}/tcp/{PORT}" for ip in MANY_V4
    )


async def test_aaaa_records_become_ip6_multiaddrs(dnsmasq: Dnsmasq) -> None:
    boot = DnsBootstrapper("dual.peerpull.test", PORT, [dnsmasq.nameserver])
    await boot.start([])

    peers = sorted(await boot.peers())

    assert peers == [
        f"/ip4/127.0.2.21/tcp/{PORT}",
        f"/ip6/fd00::21/tcp/{PORT}",
        f"/ip6/fd00::22/tcp/{PORT}",
    ]
    v6only = DnsBootstrapper("v6only.peerpull.test", PORT, [dnsmasq.nameserver])
    assert await v6only.peers() == [f"/ip6/fd00::31/tcp/{PORT}"]


async def test_own_addresses_are_excluded(dnsmasq: Dnsmasq) -> None:
    boot = DnsBootstrapper("dual.peerpull.test", PORT, [dnsmasq.nameserver])
    await boot.start(
        [
            f"/ip4/127.0.2.21/tcp/{PORT}/p2p/12D3KooWExample",
            "/ip6/fd00:0:0::22/tcp/4001",
        ]
    )

    assert await boot.peers() == [f"/ip6/fd00::21/tcp/{PORT}"]


@pytest.mark.parametrize(
    "domain", ["absent.peerpull.test", "elsewhere.example"], ids=["nxdomain", "refused"]
)
async def test_unknown_name_gives_no_peers_and_one_debug_line(
    dnsmasq: Dnsmasq, domain: str, caplog: pytest.LogCaptureFixture
) -> None:
    boot = DnsBootstrapper(domain, PORT, [dnsmasq.nameserver])
    await boot.start([])
    caplog.set_level(logging.DEBUG, logger="daemon.routing.dns")

    assert await boot.peers() == []

    records = [r for r in caplog.records if r.name == "daemon.routing.dns"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.DEBUG, "dns bootstrap found no peers")
    ]


async def test_silent_server_gives_no_peers_in_bounded_time(
    silent_nameserver: str, caplog: pytest.LogCaptureFixture
) -> None:
    boot = DnsBootstrapper(
        "many.peerpull.test", PORT, [silent_nameserver], timeout_s=0.5
    )
    await boot.start([])
    caplog.set_level(logging.DEBUG, logger="daemon.routing.dns")

    started = time.monotonic()
    assert await boot.peers() == []
    elapsed = time.monotonic() - started

    assert elapsed < 1.0
    records = [r for r in caplog.records if r.name == "daemon.routing.dns"]
    assert len(records) == 1


async def test_peers_can_be_cancelled(silent_nameserver: str) -> None:
    boot = DnsBootstrapper("many.peerpull.test", PORT, [silent_nameserver])
    task = asyncio.create_task(boot.peers())
    await asyncio.sleep(0.1)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


def test_nameserver_forms() -> None:
    assert parse_nameserver("10.0.0.10").port == 53
    assert parse_nameserver("10.0.0.10:5353").port == 5353
    assert parse_nameserver("[fd00::a]:5353").address == "fd00::a"
    assert parse_nameserver("fd00::a").port == 53
    with pytest.raises(ValueError):
        parse_nameserver("dns.example")
