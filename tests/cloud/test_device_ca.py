"""The controller's device CA: a certificate for the enrolling device's id whatever its request asked,
for client authentication only; bad requests refused with the field named, no device created."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.cloud.services.device_ca import DeviceCA

from testkit import DeviceKey


def _csr(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                              cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_the_certificate_names_the_device_whatever_the_request_asked(tmp_path):
    ca = DeviceCA.load_or_create(tmp_path)
    cert = x509.load_pem_x509_certificate(ca.sign(_csr("someone-else"), device_id="cam-1", days=30, now=1.8e9).encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-1"
    assert cert.issuer == ca.certificate.subject
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.certificate)
    assert DeviceCA.load_or_create(tmp_path).certificate == ca.certificate   # kept across restarts
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0


def test_enrollment_signs_a_request_only_where_the_controller_is_a_ca(settings, client, controller):
    token = client.post("/api/v1/enrollment-tokens", json={"device_id": "plain"}).json()["token"]
    r = client.post("/api/v1/enroll", json={"token": token, "device_id": "plain", "device_public_key_pem":
                                            DeviceKey().pem, "tls_csr_pem": _csr("plain")},
                    headers={"Authorization": ""})
    assert r.status_code == 201 and r.json()["tls_certificate_pem"] is None
    assert client.get("/api/v1/broker/ca").status_code == 404


def test_a_bad_request_is_refused_and_creates_no_device(settings, tmp_path, clock, transport):
    from fastapi.testclient import TestClient

    from edgefleet.cloud.app import create_app

    app = create_app(settings.model_copy(update={"device_certificates": True}), clock=clock,
                     transport_factory=lambda url, on_message: transport, reconcile_in_background=False)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {settings.admin_token}"
        token = client.post("/api/v1/enrollment-tokens", json={"device_id": "cam-9"}).json()["token"]
        r = client.post("/api/v1/enroll", json={"token": token, "device_id": "cam-9", "device_public_key_pem":
                                                DeviceKey().pem, "tls_csr_pem": "not a csr"},
                        headers={"Authorization": ""})
        assert r.status_code == 400 and "tls_csr_pem" in r.text
        assert client.get("/api/v1/devices/cam-9").status_code == 404
        r = client.post("/api/v1/enroll", json={"token": token, "device_id": "cam-9", "device_public_key_pem":
                                                DeviceKey().pem, "tls_csr_pem": _csr("x")},
                        headers={"Authorization": ""})
        assert r.status_code == 201 and "BEGIN CERTIFICATE" in r.json()["tls_certificate_pem"]
        assert "BEGIN CERTIFICATE" in client.get("/api/v1/broker/ca").text
