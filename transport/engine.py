"""The QUIC engine seam: aioquic (required) or qh3 (same API, native core).

Everything the server and client take from the QUIC library comes through an
Engine, so the rest of `transport/` never imports either library. The two
places that reach into an engine's private state (queued send bytes and the
peer's certificate under aioquic) live here, next to their qh3 equivalents.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ENGINES = ("aioquic", "qh3")
MIN_DATAGRAM = 1200
MAX_UDP_PAYLOAD = 65527
# aioquic writes STREAM frame lengths as 2-byte varints (at most 16383), so a
# larger datagram ends the connection with "Failed to parse frame" (seen here
# at 32768 bytes on loopback, whose MTU is 65536); 16384 is the ceiling.
MAX_DATAGRAM = 16384
_SIOCGIFMTU = 0x8921


class Session(Protocol):
    """What a protocol shell forwards to: QUIC events and I/O wake-ups."""

    def quic_event(self, event: Any) -> None:
        """One QUIC event, in order."""

    def wake(self) -> None:
        """Datagrams were processed; queues may have drained."""


@dataclass(frozen=True)
class Engine:
    """One QUIC library's classes and the few accessors the transport needs."""

    name: str
    QuicConfiguration: Any
    QuicConnection: Any
    QuicServer: Any
    H3Connection: Any
    H3_ALPN: list[str]
    HeadersReceived: Any
    DataReceived: Any
    ConnectionTerminated: Any
    HandshakeCompleted: Any
    StreamReset: Any
    StopSendingReceived: Any
    shell: Any  # a QuicConnectionProtocol subclass forwarding to a Session

    def send_buffer_size(self, quic: Any, stream_id: int) -> int:
        """Bytes queued on a stream and not yet acknowledged by the peer."""
        public = getattr(quic, "get_send_buffer_size", None)
        if public is not None:  # qh3
            return int(public(stream_id))
        # aioquic has no public API: the sender keeps unacknowledged bytes in
        # `_buffer` and trims it as ACKs arrive (aioquic 1.x quic/stream.py)
        stream = quic._streams.get(stream_id)
        if stream is None:
            return 0
        return len(stream.sender._buffer)

    def peer_certificate_der(self, quic: Any) -> bytes | None:
        """The DER certificate the peer presented in the handshake, or None."""
        tls = getattr(quic, "tls", None)
        # aioquic keeps the parsed certificate privately on its TLS context
        cert = getattr(tls, "_peer_certificate", None)
        if cert is None:
            cert = getattr(tls, "peer_certificate", None)
        if cert is None:
            return None
        if isinstance(cert, bytes):
            return cert
        from cryptography.hazmat.primitives.serialization import Encoding

        der = cert.public_bytes(Encoding.DER)
        return bytes(der)

    async def datagram_endpoint(
        self, protocol_factory: Callable[[], Any], host: str, port: int = 0
    ) -> tuple[asyncio.DatagramTransport, Any]:
        """A UDP endpoint bound to `host:port` (never the wildcard `::`)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            protocol_factory, sock=sock
        )
        return transport, protocol


def load_engine(name: str = "auto") -> Engine:
    """The engine `name`: auto (qh3 if importable, else aioquic), aioquic, qh3."""
    if name == "auto":
        try:
            return _load("qh3")
        except ImportError:
            return _load("aioquic")
    if name not in ENGINES:
        raise ValueError(f"unknown QUIC engine {name!r} (auto, aioquic, qh3)")
    try:
        return _load(name)
    except ImportError as err:
        raise ValueError(f"QUIC engine {name!r} is not installed") from err


def _load(root: str) -> Engine:
    configuration = importlib.import_module(f"{root}.quic.configuration")
    connection = importlib.import_module(f"{root}.quic.connection")
    quic_events = importlib.import_module(f"{root}.quic.events")
    h3 = importlib.import_module(f"{root}.h3.connection")
    h3_events = importlib.import_module(f"{root}.h3.events")
    protocol = importlib.import_module(f"{root}.asyncio.protocol")
    server = importlib.import_module(f"{root}.asyncio.server")
    return Engine(
        name=root,
        QuicConfiguration=configuration.QuicConfiguration,
        QuicConnection=connection.QuicConnection,
        QuicServer=server.QuicServer,
        H3Connection=_lenient_h3(h3.H3Connection),
        H3_ALPN=list(h3.H3_ALPN),
        HeadersReceived=h3_events.HeadersReceived,
        DataReceived=h3_events.DataReceived,
        ConnectionTerminated=quic_events.ConnectionTerminated,
        HandshakeCompleted=quic_events.HandshakeCompleted,
        StreamReset=quic_events.StreamReset,
        StopSendingReceived=getattr(quic_events, "StopSendingReceived", None),
        shell=_make_shell(protocol.QuicConnectionProtocol),
    )


def _lenient_h3(base: Any) -> Any:
    """The engine's H3Connection without its connection-wide Content-Length check.

    aioquic 1.7.2 closes the whole connection when a body does not match its
    Content-Length and does not know the request method, so a HEAD response
    (Content-Length, no body; RFC 9110 section 9.3.2) kills the connection.
    The client checks each body against Content-Length itself, per stream.
    """
    if not hasattr(base, "_check_content_length"):
        return base

    class LenientH3(base):  # type: ignore[misc]
        def _check_content_length(self, stream: Any) -> None:
            return None

    return LenientH3


# TODO(aioquic above ~60 MB/s wanted): datagrams go out one sendto() per
# packet through the engine's transmit loop; Python has no sendmmsg, and UDP
# GSO through sendmsg(UDP_SEGMENT) is the next step for aioquic.
def _make_shell(base: Any) -> Any:
    """A subclass of the engine's protocol that forwards to a Session."""

    class Shell(base):  # type: ignore[misc]
        session: Session | None = None

        async def wait_connected(self) -> None:
            try:
                await super().wait_connected()
            finally:
                # Private: the handshake future. A handshake abandoned on
                # timeout is failed by the engine later; collect that outcome
                # so asyncio does not log "Future exception was never retrieved".
                waiter = getattr(self, "_connected_waiter", None)
                if waiter is not None:
                    waiter.add_done_callback(_collect)

        def quic_event_received(self, event: Any) -> None:
            if self.session is not None:
                self.session.quic_event(event)

        def datagram_received(self, data: Any, addr: Any) -> None:
            super().datagram_received(data, addr)
            if self.session is not None:
                self.session.wake()

        def _handle_timer(self) -> None:
            super()._handle_timer()
            if self.session is not None:
                self.session.wake()

    if hasattr(base, "datagrams_received"):  # qh3's batched receive path

        def datagrams_received(self: Any, batch: Any, addr: Any) -> None:
            base.datagrams_received(self, batch, addr)
            if self.session is not None:
                self.session.wake()

        Shell.datagrams_received = datagrams_received
    return Shell


def _collect(future: Any) -> None:
    if not future.cancelled():
        future.exception()


def configuration(
    engine: Engine,
    *,
    is_client: bool,
    max_datagram_size: int,
    idle_timeout_s: float,
) -> Any:
    """A QuicConfiguration tuned for bulk transfer (windows per the notes)."""
    config = engine.QuicConfiguration(
        is_client=is_client,
        alpn_protocols=engine.H3_ALPN,
        idle_timeout=idle_timeout_s,
        max_datagram_size=max_datagram_size,
    )
    config.max_data = 64 << 20
    config.max_stream_data = 16 << 20
    if engine.name == "qh3":
        # qh3's H3 layer refuses a peer's H3_DATAGRAM setting without this
        config.max_datagram_frame_size = 65536
    return config


def datagram_size(setting: str | int, host: str) -> int:
    """The QUIC datagram size: `auto` is the MTU of `host`'s interface minus headers.

    Integers (or digit strings) are checked against [1200, MAX_DATAGRAM].
    """
    version = _ip_version(host)
    headers = 48 if version == 6 else 28
    ceiling = min(MAX_UDP_PAYLOAD - headers, MAX_DATAGRAM)
    if isinstance(setting, str) and setting.strip().lower() == "auto":
        mtu = interface_mtu(host)
        return max(MIN_DATAGRAM, min(mtu - headers, ceiling))
    try:
        size = int(setting)
    except ValueError as err:
        raise ValueError(f"{setting!r} is not a datagram size or 'auto'") from err
    if not MIN_DATAGRAM <= size <= ceiling:
        raise ValueError(f"datagram size {size} is outside {MIN_DATAGRAM}..{ceiling}")
    return size


def interface_mtu(host: str) -> int:
    """The MTU of the interface holding `host` (the route's for a wildcard)."""
    name = _interface_of(host)
    if name is not None:
        try:
            return int(Path(f"/sys/class/net/{name}/mtu").read_text())
        except (OSError, ValueError):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                request = struct.pack("16si", name.encode()[:15], 0)
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, request)
                return int(struct.unpack("16si", reply)[1])
    return 1500


def _interface_of(host: str) -> str | None:
    """The interface name whose addresses include `host`, from /proc/net."""
    address = ipaddress.ip_address(host) if host else None
    if address is None or address.is_unspecified:
        return _default_route_interface()
    if address.version == 4:
        return _ipv4_interface(address)
    for line in _read_lines("/proc/net/if_inet6"):
        fields = line.split()
        if (
            len(fields) == 6
            and ipaddress.ip_address(
                ":".join(fields[0][i : i + 4] for i in range(0, 32, 4))
            )
            == address
        ):
            return fields[5]
    return "lo" if address.is_loopback else None


def _ipv4_interface(address: ipaddress.IPv4Address) -> str | None:
    """The interface holding an IPv4 address (SIOCGIFCONF lists them)."""
    for name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                reply = fcntl.ioctl(
                    sock.fileno(), 0x8915, struct.pack("256s", name[1].encode()[:15])
                )  # SIOCGIFADDR: the interface's primary IPv4 address
            except OSError:
                continue
        if ipaddress.IPv4Address(reply[20:24]) == address:
            return name[1]
    return "lo" if address.is_loopback else None


def _default_route_interface() -> str | None:
    for line in _read_lines("/proc/net/route")[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[1] == "00000000":
            return fields[0]
    return None


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _ip_version(host: str) -> int:
    try:
        return ipaddress.ip_address(host).version if host else 4
    except ValueError:
        return 4
