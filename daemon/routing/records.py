"""`/peerpull/records/1.0.0`: push our provider records to a peer in batches.

Kademlia's ADD_PROVIDER carries one key per stream, and it has no "stop
providing" at all, so a withdrawn key would stay resolvable to us for a
whole record TTL. This protocol adds or removes many of the *sender's own*
records at once. Wire format (ours): one frame per stream, a varint length
then the body: an op byte (0x01 add, 0x02 remove), a varint-prefixed block
of the sender's listen multiaddrs (each varint-prefixed UTF-8, add only,
else empty), then the DHT keys, each varint-prefixed. The receiver records
the stream's authenticated remote peer as provider (a node can only speak
for itself) and answers one byte, 0x01.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import trio
import varint
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.provider_store import ProviderStore
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.utils.varint import read_varint_prefixed_bytes_limited
from multiaddr import Multiaddr

log = logging.getLogger(__name__)

PROTOCOL_ID = TProtocol("/peerpull/records/1.0.0")
ADD, REMOVE = 0x01, 0x02
MAX_KEY_BYTES = 80  # the DHT's own limit for ADD_PROVIDER keys
MAX_ADDR_BYTES = 256
MAX_ADDRS = 8
MAX_FRAME_BYTES = 1 << 20
KEYS_PER_FRAME = (MAX_FRAME_BYTES - MAX_ADDRS * (MAX_ADDR_BYTES + 2)) // (
    MAX_KEY_BYTES + 2
)
_ACK = b"\x01"


class RecordsFormatError(ValueError):
    """A records frame that does not parse."""


def _items(items: Iterable[bytes]) -> bytes:
    return b"".join(bytes(varint.encode(len(item))) + item for item in items)


def encode(op: int, addrs: Iterable[str], keys: Iterable[bytes]) -> bytes:
    """One frame: length, op, the address block, the keys."""
    block = _items(addr.encode() for addr in addrs)
    body = bytes([op]) + bytes(varint.encode(len(block))) + block + _items(keys)
    return bytes(varint.encode(len(body))) + body


def decode(body: bytes) -> tuple[int, list[str], list[bytes]]:
    """Op, addresses and keys of a frame body (without its outer length)."""
    if not body or body[0] not in (ADD, REMOVE):
        raise RecordsFormatError("unknown records op")
    block_length, pos = _read_varint(body, 1)
    if pos + block_length > len(body):
        raise RecordsFormatError("address block truncated")
    addrs = [a.decode() for a in _split(body[pos : pos + block_length], MAX_ADDR_BYTES)]
    if len(addrs) > MAX_ADDRS:
        raise RecordsFormatError("too many addresses")
    keys = list(_split(body[pos + block_length :], MAX_KEY_BYTES))
    return body[0], addrs, keys


def _split(data: bytes, limit: int) -> Iterator[bytes]:
    """The varint-prefixed items of `data`, each at most `limit` bytes."""
    pos = 0
    while pos < len(data):
        length, pos = _read_varint(data, pos)
        if length > limit or pos + length > len(data):
            raise RecordsFormatError("item too long or truncated")
        yield data[pos : pos + length]
        pos += length


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise RecordsFormatError("bad varint in records frame")


def remove_records(store: ProviderStore, provider: ID, keys: Iterable[bytes]) -> int:
    """Drop `provider`'s record for each key from `store`; return how many went."""
    removed = 0
    for key in keys:
        records = store.providers.get(key)
        if records is not None and records.pop(str(provider), None) is not None:
            removed += 1
            if not records:
                del store.providers[key]
    return removed


def add_records(
    store: ProviderStore, provider: ID, addrs: list[str], keys: Iterable[bytes]
) -> int:
    """Record `provider` (at `addrs`) for each key in `store`; return how many."""
    info = PeerInfo(provider, [Multiaddr(addr) for addr in addrs])
    count = 0
    for key in keys:
        store.add_provider(key, info)
        count += 1
    return count


class RecordsProtocol:
    """Serves other nodes' record batches and sends ours."""

    def __init__(self, host: IHost, store: ProviderStore, timeout_s: float) -> None:
        self._host = host
        self._store = store
        self._timeout_s = timeout_s
        host.set_stream_handler(PROTOCOL_ID, self.handle)

    async def handle(self, stream: INetStream) -> None:
        """Add or remove the remote's own records for the keys it names."""
        remote = stream.muxed_conn.peer_id
        try:
            with trio.fail_after(self._timeout_s):
                body = await read_varint_prefixed_bytes_limited(stream, MAX_FRAME_BYTES)
                op, addrs, keys = decode(body)
                if op == ADD:
                    count = add_records(self._store, remote, addrs, keys)
                else:
                    count = remove_records(self._store, remote, keys)
                await stream.write(_ACK)
            log.debug(
                "records from peer",
                extra={"peer": str(remote), "op": op, "keys": count},
            )
        except (Exception, trio.TooSlowError) as err:
            log.debug(
                "bad records stream", extra={"peer": str(remote), "error": str(err)}
            )
            await stream.reset()
        else:
            await stream.close()

    async def send(self, peer_id: ID, op: int, keys: list[bytes]) -> bool:
        """Send one peer our records to add or remove; True once it confirmed."""
        addrs = (
            [str(addr) for addr in self._host.get_addrs()][:MAX_ADDRS]
            if op == ADD
            else []
        )
        with trio.move_on_after(
            self._timeout_s * max(1, len(keys) // KEYS_PER_FRAME + 1)
        ):
            try:
                for start in range(0, len(keys), KEYS_PER_FRAME):
                    stream = await self._host.new_stream(peer_id, [PROTOCOL_ID])
                    try:
                        await stream.write(
                            encode(op, addrs, keys[start : start + KEYS_PER_FRAME])
                        )
                        if await stream.read(1) != _ACK:
                            return False
                    finally:
                        await stream.close()
            except Exception as err:
                log.debug(
                    "records not sent", extra={"peer": str(peer_id), "error": str(err)}
                )
                return False
            return True
        return False
