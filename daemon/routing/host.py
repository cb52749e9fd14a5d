"""The libp2p host: TCP only, Noise only, Yamux only, no background dialling.

py-libp2p's defaults also offer TLS, secio and plaintext security, Mplex
(which stalls ~5 s per stream) and an auto-connector that dials peers from
the peerstore until it holds 100 connections; none of that is wanted here.
Also: learning the peer id behind a multiaddr that lacks `/p2p/<id>`.
"""

from __future__ import annotations

import ipaddress
import socket

import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.security_multistream import SecurityMultistream
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.tcp.tcp import TCP
from multiaddr import Multiaddr

from daemon.values import Address

DIAL_TIMEOUT_S = 3.0


class RouterAddressError(ValueError):
    """The router listen address is not usable for libp2p."""


def build(key_pair: KeyPair) -> IHost:
    """A host that speaks /noise and /yamux/1.0.0 over TCP and dials nobody
    on its own (no mDNS, UPnP, bootstrap list or auto-connector)."""
    noise = NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        enable_mDNS=False,
        enable_upnp=False,
        bootstrap=None,
        enable_quic=False,
        connection_config=ConnectionConfig(
            # zero watermarks: the auto-connector's target is 0, it never dials
            min_connections=0,
            low_watermark=0,
            dial_timeout=DIAL_TIMEOUT_S,
        ),
    )
    # The auto-connector aims at the midpoint of the watermarks (150 even with
    # low_watermark=0) and dials whatever the peerstore holds; zero watermarks
    # alone do not stop it, and the high one also drives pruning. Switch it off.
    host.get_network().auto_connector.maybe_connect = _never_dial  # type: ignore[attr-defined]
    return host


async def _never_dial() -> None:
    return None


def listen_multiaddr(listen: Address) -> Multiaddr:
    """`/ip4|ip6/<ip>/tcp/<port>` for a listen address (empty host: every IPv4)."""
    host = listen.host or "0.0.0.0"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = ipaddress.ip_address(_resolve(host))
    family = "ip4" if ip.version == 4 else "ip6"
    return Multiaddr(f"/{family}/{ip}/tcp/{listen.port}")


def _resolve(name: str) -> str:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError as err:
        raise RouterAddressError(f"cannot resolve router host {name!r}") from err
    return str(infos[0][4][0])


async def learn_peer_id(host: IHost, addr: Multiaddr) -> ID:
    """Dial `addr`, run the Noise handshake without an expected peer id, and
    return the id the remote proved it holds; the probe connection is closed.

    py-libp2p's Noise initiator accepts `remote_peer=None` and reports the id
    derived from the key that signed the handshake payload.
    """
    noise = NoiseTransport(
        _host_key_pair(host), noise_privkey=new_x25519_key_pair().private_key
    )
    security = SecurityMultistream({TProtocol(NOISE_PROTOCOL_ID): noise})
    with trio.fail_after(DIAL_TIMEOUT_S):
        raw = await TCP().dial(addr)
        try:
            secured = await security.secure_outbound(raw, None)  # type: ignore[arg-type]
        except BaseException:
            await raw.close()
            raise
        peer_id = secured.get_remote_peer()
        await secured.close()
    return peer_id


def _host_key_pair(host: IHost) -> KeyPair:
    store = host.get_peerstore()
    me = host.get_id()
    return KeyPair(store.privkey(me), store.pubkey(me))
