"""Routing keys as DHT keys: CIDv1, codec raw, sha2-256 over the key's UTF-8.

Layout of the binary CID (multiformats): varint version 1, varint codec
0x55 (raw), then the multihash: varint 0x12 (sha2-256), varint length 32,
the 32 digest bytes. Its text form is multibase `b` (base32, lowercase, no
padding).
"""

from __future__ import annotations

import base64
import hashlib

CID_VERSION = 0x01
RAW_CODEC = 0x55
SHA2_256 = 0x12
SHA2_256_LENGTH = 0x20


def multihash(key: str) -> bytes:
    """The sha2-256 multihash of the key string's UTF-8 bytes."""
    return bytes([SHA2_256, SHA2_256_LENGTH]) + hashlib.sha256(key.encode()).digest()


def cid_bytes(key: str) -> bytes:
    """The binary CIDv1 (raw codec) naming `key` in the DHT."""
    return bytes([CID_VERSION, RAW_CODEC]) + multihash(key)


def cid(key: str) -> str:
    """The CIDv1 text form (base32 multibase, prefix `b`)."""
    encoded = base64.b32encode(cid_bytes(key)).decode().lower().rstrip("=")
    return "b" + encoded
