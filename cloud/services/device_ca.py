"""The controller as a small certificate authority for device TLS client certificates (setting
``device_certificates``; docs/operations.md §3).

At enrollment the device makes its own TLS key and sends a certificate request; the controller signs
a certificate whose subject common name is the device id (whatever the request asked for), for TLS
client authentication only. Mosquitto with ``require_certificate true`` and ``use_identity_as_username
true`` on the device listener then knows each client by its device id, and its ACL ``%u`` patterns
confine it to its own topics. The CA key lives in ``<data_dir>/ca/ca.key`` (0600).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.protocol.errors import InvalidRequestError
from edgefleet.protocol.files import atomic_write

log = logging.getLogger(__name__)

MAX_CSR_BYTES = 4096


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class DeviceCA:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @classmethod
    def load_or_create(cls, directory: Path, *, name: str = "EdgeFleet device CA") -> DeviceCA:
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise InvalidRequestError("the device CA key is not an EC key", where=str(key_path))
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), secret=True)
        atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        log.warning("generated the device CA %s (give %s to the broker as its cafile)", key_path, cert_path)
        return cls(key, cert)

    def sign(self, csr_pem: str, *, device_id: str, days: int, now: float) -> str:
        """A client certificate for ``device_id`` (its common name) over the key of ``csr_pem``."""
        if len(csr_pem) > MAX_CSR_BYTES:
            raise InvalidRequestError(f"certificate request of {len(csr_pem)} bytes exceeds {MAX_CSR_BYTES}",
                                      where="tls_csr_pem")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8"))
        except ValueError:
            raise InvalidRequestError("not a PEM certificate request", where="tls_csr_pem",
                                      hint="send the CSR the agent made for its TLS key") from None
        if not csr.is_signature_valid:
            raise InvalidRequestError("the certificate request's signature does not verify", where="tls_csr_pem")
        start = datetime.datetime.fromtimestamp(now, datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(_name(device_id)).issuer_name(self.certificate.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start - datetime.timedelta(minutes=5))
                .not_valid_after(start + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
