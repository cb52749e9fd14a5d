"""DHT keys: CIDv1, raw codec, sha2-256 over the key string's UTF-8 bytes."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given
from hypothesis import strategies as st

from daemon.routing.keys import cid, cid_bytes, multihash


def test_known_vector() -> None:
    # Computed independently with py-cid: make_cid(1, "raw", sha2-256("sha256:abc")).
    assert (
        cid("sha256:abc")
        == "bafkreidh5g6dz7jbmpbjpa2y37qa2l4rftko4dez6b34gwb3hg2iv25req"
    )


@given(st.text(max_size=200))
def test_layout_and_text_form_agree(key: str) -> None:
    raw = cid_bytes(key)
    assert raw[:4] == bytes([0x01, 0x55, 0x12, 0x20])
    assert raw[4:] == hashlib.sha256(key.encode()).digest()
    assert multihash(key) == raw[2:]
    text = cid(key)
    assert text.startswith("b") and text == text.lower()
    padded = text[1:].upper() + "=" * (-len(text[1:]) % 8)
    assert base64.b32decode(padded) == raw


def test_tag_keys_of_two_registries_never_collide() -> None:
    assert cid("docker.io/library/app:v1") != cid("ghcr.io/library/app:v1")
