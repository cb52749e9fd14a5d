"""The transport certificate's binding to the node's libp2p identity."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from transport import identity
from transport.identity import BINDING_OID, peer_id_of, tls_credentials
from transport.peer import PeerIdentityMismatch


def _der(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def test_cert_binds_the_peer_id_and_key_is_private(tmp_path: Path) -> None:
    key_pair = create_new_key_pair()
    cert, key = tls_credentials(key_pair, tmp_path)
    assert peer_id_of(_der(cert)) == str(ID.from_pubkey(key_pair.public_key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.curve.name == "secp256r1"


def test_credentials_are_kept_then_reissued_for_a_new_identity(
    tmp_path: Path,
) -> None:
    first = create_new_key_pair()
    cert, key = tls_credentials(first, tmp_path)
    before_cert, before_key = cert.read_bytes(), key.read_bytes()
    tls_credentials(first, tmp_path)
    assert cert.read_bytes() == before_cert

    second = create_new_key_pair()
    tls_credentials(second, tmp_path)
    assert key.read_bytes() == before_key
    assert peer_id_of(_der(cert)) == str(ID.from_pubkey(second.public_key))


def test_cert_near_expiry_is_reissued(tmp_path: Path) -> None:
    key_pair = create_new_key_pair()
    cert, _ = tls_credentials(key_pair, tmp_path)
    old = x509.load_pem_x509_certificate(cert.read_bytes())
    tls_key = serialization.load_pem_private_key(
        (tmp_path / identity.KEY_FILE).read_bytes(), None
    )
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(tls_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=300))
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    binding = old.extensions.get_extension_for_oid(BINDING_OID)
    aging = builder.add_extension(binding.value, False).sign(tls_key, hashes.SHA256())
    cert.write_bytes(aging.public_bytes(serialization.Encoding.PEM))

    tls_credentials(key_pair, tmp_path)
    renewed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert renewed.not_valid_after_utc - now > datetime.timedelta(days=300)


def test_binding_copied_onto_another_tls_key_is_rejected(tmp_path: Path) -> None:
    cert, _ = tls_credentials(create_new_key_pair(), tmp_path)
    stolen = x509.load_pem_x509_certificate(cert.read_bytes())
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(stolen.subject)
        .issuer_name(stolen.issuer)
        .public_key(other_key.public_key())
        .serial_number(2)
        .not_valid_before(stolen.not_valid_before_utc)
        .not_valid_after(stolen.not_valid_after_utc)
        .add_extension(
            stolen.extensions.get_extension_for_oid(BINDING_OID).value, False
        )
        .sign(other_key, hashes.SHA256())
    )
    with pytest.raises(PeerIdentityMismatch, match="signature"):
        peer_id_of(forged.public_bytes(serialization.Encoding.DER))


def test_cert_without_binding_or_garbage_is_rejected() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    now = datetime.datetime.now(datetime.UTC)
    plain = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(3)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PeerIdentityMismatch):
        peer_id_of(plain.public_bytes(serialization.Encoding.DER))
    with pytest.raises(PeerIdentityMismatch):
        peer_id_of(b"not a certificate")


@pytest.mark.parametrize(
    "value", [b"", b"\x30\x00", b"\x30\x03\x04\x01", b"\x30\x84\xff\xff\xff\xff"]
)
def test_malformed_binding_values_raise_value_error(value: bytes) -> None:
    with pytest.raises(ValueError):
        identity._decode_binding(value)
