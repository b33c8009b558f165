"""Throwaway TLS material and SCRAM users for a secured test broker (harness/kafka_broker.py ``security=``).

``make_broker_tls(dir)`` writes a fresh CA (PEM, what a client's ``ssl.ca.location`` names), a broker
certificate for 127.0.0.1 and localhost signed by it (a PKCS12 keystore, the format every Kafka
version reads), and a second, unrelated CA: a client that trusts only that one must refuse the broker.
Keys are EC P-256 (quick to make, accepted by the JDK and OpenSSL); everything is valid for a day.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SCRAM_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class BrokerTls:
    """What a secured broker needs (keystore) and what its clients trust (ca_file; other_ca_file trusts nothing
    the broker presents). ``scram_users`` (name -> password) are created when the storage is formatted."""

    ca_file: Path
    other_ca_file: Path
    keystore: Path
    keystore_password: str
    scram_users: Mapping[str, str] = field(default_factory=dict)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_broker_tls(directory: Path, *, scram_users: Mapping[str, str] | None = None) -> BrokerTls:
    """Write ca.pem, other-ca.pem and broker.p12 into ``directory``; see the module docstring."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _ca("clip-worker test CA", now)
    _, other_ca = _ca("clip-worker unrelated CA", now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kafka-broker"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    password = secrets.token_hex(16)
    keystore = directory / "broker.p12"
    keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca_cert], serialization.BestAvailableEncryption(password.encode())))
    ca_file, other_ca_file = directory / "ca.pem", directory / "other-ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    other_ca_file.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    return BrokerTls(ca_file=ca_file, other_ca_file=other_ca_file, keystore=keystore, keystore_password=password,
                     scram_users=dict(scram_users or {}))
