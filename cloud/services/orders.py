"""Issuing signed deployment orders: one per device, each with the next per-device sequence."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from edgefleet.cloud.services import trust
from edgefleet.cloud.services.auth import download_token
from edgefleet.cloud.store.tables import Bundle, Device
from edgefleet.protocol.messages import DeploymentOrder, HealthCheck, OrderMessage
from edgefleet.protocol.orders import sign_order
from edgefleet.protocol.vocabulary import OrderAction


@dataclass
class OrderIssuer:
    key: Ed25519PrivateKey
    public_url: str
    lifetime_s: float
    """How long a signed order is valid."""
    download_lifetime_s: float
    """How long the signed download link in an order works (never longer than the order itself)."""

    def bundle_url(self, digest: str, *, expires_at: int) -> str:
        token = download_token(self.key, digest=digest, expires_at=expires_at)
        return f"{self.public_url}/api/v1/bundles/{digest}/download?token={token}"

    def issue(self, session: Session, *, device: Device, deployment_id: str, bundle: Bundle, action: OrderAction,
              now: float, health_check: HealthCheck | None = None) -> OrderMessage:
        """Sign the next order for ``device`` (bumping its stored sequence, which the caller commits)."""
        session.flush()
        session.refresh(device, with_for_update=True)
        device.last_sequence += 1
        session.add(device)
        issued = int(now)
        expires = int(now + self.lifetime_s)
        order = DeploymentOrder(
            device_id=device.id, deployment_id=deployment_id, action=action, bundle_digest=bundle.digest,
            bundle_size=bundle.size,
            bundle_url=self.bundle_url(bundle.digest, expires_at=min(expires, int(now + self.download_lifetime_s))),
            bundle_name=bundle.name, bundle_version=bundle.version, sequence=device.last_sequence,
            issued_at=issued, expires_at=expires,
            health_check=health_check if action == OrderAction.INSTALL else None)
        # a device behind the trust root in force gets the roots it lacks with the order (it may not
        # know the key that signs it yet: docs/security.md §9)
        return OrderMessage(device_id=device.id, sent_at=now, order=sign_order(order, self.key),
                            roots=trust.roots_after(session, device.root_version))
