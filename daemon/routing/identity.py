"""The node's Ed25519 libp2p identity, kept in the data dir so its peer id
survives restarts.

The file holds the private key in libp2p's protobuf key encoding (the form
go-libp2p and Kubo also write), mode 0600, written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf.message import DecodeError
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key

KEY_FILE = "router.key"


class IdentityError(RuntimeError):
    """The identity file exists but cannot be used."""


def load_or_create(data_dir: Path) -> KeyPair:
    """Read `<data_dir>/router.key`, or create it (0600) on first start."""
    path = data_dir / KEY_FILE
    if path.exists():
        return _read(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    key_pair = create_new_key_pair()
    write_private(path, key_pair.private_key.serialize())
    return key_pair


def _read(path: Path) -> KeyPair:
    try:
        private_key = deserialize_private_key(path.read_bytes())
    except (OSError, ValueError, DecodeError) as err:
        reason = getattr(err, "strerror", None) or "not a libp2p private key"
        raise IdentityError(f"cannot read router identity {path}: {reason}") from err
    if private_key.get_type() != KeyType.Ed25519:
        raise IdentityError(f"{path} is not an Ed25519 key")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return KeyPair(private_key, private_key.get_public_key())


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, mode 0600 (keys and certificates)."""
    temp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
