"""The node's TLS certificate for the peer transport, bound to its libp2p identity.

Each node keeps an ECDSA P-256 TLS key in its data dir and a self-signed
certificate for it. The certificate carries one extra, non-critical
extension that binds it to the node's libp2p Ed25519 identity:

    extnValue = DER SEQUENCE {
        OCTET STRING  libp2p public key (protobuf key encoding)
        OCTET STRING  libp2p signature over BINDING_PREFIX + the cert's SPKI DER
    }

A client that reaches a peer checks the signature and derives the peer id
from the public key, so a certificate cannot be replayed for another TLS key
and a peer cannot claim another node's id (the idea of the libp2p TLS
handshake, with its own OID, prefix and code). TLS 1.3's CertificateVerify
proves the server holds the certificate's key.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.peer.id import ID

from daemon.routing.identity import write_private
from transport.peer import PeerIdentityMismatch

# 2.25 is the UUID arc (ITU-T X.667): anyone may mint an OID from a UUID
BINDING_OID = x509.ObjectIdentifier("2.25.253717424190836516236735186637574370881")
BINDING_PREFIX = b"peerpull-transport-binding-v1:"
KEY_FILE = "transport.key"
CERT_FILE = "transport.crt"
VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)


def tls_credentials(key_pair: KeyPair, data_dir: Path) -> tuple[Path, Path]:
    """Paths of the node's TLS certificate and key, (re)made as needed.

    The key (0600) survives restarts; the certificate is re-issued when it
    does not bind `key_pair`, or expires within RENEW_BEFORE.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = data_dir / KEY_FILE, data_dir / CERT_FILE
    tls_key = _load_or_create_key(key_path)
    if not _cert_current(cert_path, key_pair, tls_key):
        write_private(cert_path, _issue(key_pair, tls_key))
    return cert_path, key_path


def peer_id_of(cert_der: bytes) -> str:
    """The libp2p peer id a certificate is bound to; PeerIdentityMismatch if none."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        value = cert.extensions.get_extension_for_oid(BINDING_OID).value
    except (ValueError, x509.ExtensionNotFound) as err:
        raise PeerIdentityMismatch("certificate carries no identity binding") from err
    if not isinstance(value, x509.UnrecognizedExtension):
        raise PeerIdentityMismatch("malformed identity binding")
    try:
        key_bytes, signature = _decode_binding(value.value)
        public_key = deserialize_public_key(key_bytes)
    except (ValueError, KeyError) as err:
        raise PeerIdentityMismatch("malformed identity binding") from err
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        valid = public_key.verify(BINDING_PREFIX + spki, signature)
    except (InvalidSignature, ValueError):
        valid = False
    if not valid:
        raise PeerIdentityMismatch("identity binding signature is invalid")
    return str(ID.from_pubkey(public_key))


def _issue(key_pair: KeyPair, tls_key: ec.EllipticCurvePrivateKey) -> bytes:
    spki = tls_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = key_pair.private_key.sign(BINDING_PREFIX + spki)
    binding = _encode_binding(key_pair.public_key.serialize(), signature)
    peer_id = str(ID.from_pubkey(key_pair.public_key))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, peer_id[-48:])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.UnrecognizedExtension(BINDING_OID, binding), False)
        .sign(tls_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _cert_current(
    path: Path, key_pair: KeyPair, tls_key: ec.EllipticCurvePrivateKey
) -> bool:
    """Whether the stored cert is for this TLS key, binds key_pair, and is fresh."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        bound = peer_id_of(cert.public_bytes(serialization.Encoding.DER))
    except (OSError, ValueError, PeerIdentityMismatch):
        return False
    if bound != str(ID.from_pubkey(key_pair.public_key)):
        return False
    if cert.public_key() != tls_key.public_key():
        return False
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > RENEW_BEFORE


def _load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError):
        key = None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return key
    fresh = ec.generate_private_key(ec.SECP256R1())
    write_private(
        path,
        fresh.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return fresh


# a minimal DER codec for SEQUENCE { OCTET STRING, OCTET STRING }


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def _encode_binding(public_key: bytes, signature: bytes) -> bytes:
    return _der(0x30, _der(0x04, public_key) + _der(0x04, signature))


def _read_tlv(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """One DER element of `tag` at `pos`: its content and the next position."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise ValueError("unexpected DER tag")
    size, pos = data[pos + 1], pos + 2
    if size & 0x80:
        count = size & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        size, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    if pos + size > len(data):
        raise ValueError("DER element runs past the end")
    return data[pos : pos + size], pos + size


def _decode_binding(value: bytes) -> tuple[bytes, bytes]:
    body, end = _read_tlv(value, 0, 0x30)
    if end != len(value):
        raise ValueError("trailing bytes after the binding")
    public_key, pos = _read_tlv(body, 0, 0x04)
    signature, pos = _read_tlv(body, pos, 0x04)
    if pos != len(body):
        raise ValueError("trailing bytes in the binding")
    return public_key, signature
