"""Trusted release public keys (the configured ones and those registered through the API), the
delegations document in force (docs/security.md §6) and the trust roots (§9)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from edgefleet.cloud.api.params import IdPath
from edgefleet.cloud.api.schemas import DelegationsOut, ReleaseKeyCreate, ReleaseKeyOut
from edgefleet.cloud.deps import AdminDep, ControllerDep, SessionDep, ViewerDep
from edgefleet.cloud.services import trust
from edgefleet.cloud.store.tables import DelegationsRecord
from edgefleet.protocol.delegation import parse_delegations, raw_public_key
from edgefleet.protocol.keys import key_id, public_key_pem
from edgefleet.protocol.messages import SignedDelegations, SignedRoot

api = APIRouter(prefix="/api/v1")


@api.get("/release-keys", tags=["keys"])
def list_release_keys(controller: ControllerDep, session: SessionDep, _: ViewerDep) -> list[ReleaseKeyOut]:
    configured = [ReleaseKeyOut(key_id=key_id(k), name="configured", pem=public_key_pem(k).decode(),
                                source="settings") for k in controller.configured_release_keys]
    stored = [ReleaseKeyOut.model_validate(r) for r in trust.list_release_keys(session)]
    return configured + stored


@api.post("/release-keys", tags=["keys"], status_code=201)
def add_release_key(body: ReleaseKeyCreate, controller: ControllerDep, session: SessionDep,
                    who: AdminDep) -> ReleaseKeyOut:
    """Trust another release public key (PEM) for bundle uploads. Devices get it at enrollment."""
    return ReleaseKeyOut.model_validate(trust.add_release_key(session, pem=body.pem, name=body.name,
                                                              actor=who.actor, now=controller.now()))


@api.delete("/release-keys/{key_id}", tags=["keys"], status_code=204)
def remove_release_key(key_id: IdPath, controller: ControllerDep, session: SessionDep, who: AdminDep) -> None:
    trust.remove_release_key(session, key_id_=key_id, actor=who.actor, now=controller.now())


def _delegations_out(row: DelegationsRecord) -> DelegationsOut:
    doc = parse_delegations(row.document, where=f"stored delegations version {row.version}")
    return DelegationsOut(version=row.version, expires_at=row.expires_at, pushed_at=row.pushed_at,
                          pushed_by=row.pushed_by, delegations=doc.signed.delegations, document=doc)


@api.get("/delegations", tags=["keys"])
def show_delegations(session: SessionDep, _: ViewerDep) -> DelegationsOut | None:
    """The delegations document in force (``null`` before the first push)."""
    row = trust.delegations_record(session)
    return _delegations_out(row) if row is not None else None


@api.post("/delegations", tags=["keys"], status_code=201)
def push_delegations(body: SignedDelegations, response: Response, controller: ControllerDep,
                     who: AdminDep) -> DelegationsOut:
    """Put a delegations document signed offline by the release keys in force. Refused unless it
    verifies against the release keys this controller trusts (threshold), is newer than the current
    one and has not expired. Every enrolled device gets it at once (and again after its hello). The
    current document again: 200, nothing changes."""
    with controller.session() as session:
        row, created = trust.push_delegations(session, document=body, trusted=controller.trusted_release_keys(session),
                                              actor=who.actor, now=controller.now())
        out = _delegations_out(row)
    if created:  # stored first: a device never gets a document the controller does not hold
        controller.publish_delegations()
    else:
        response.status_code = 200
    return out


@api.get("/trust/roots", tags=["keys"])
def list_roots(session: SessionDep, _: ViewerDep, after: Annotated[int, Query(ge=0, le=2**31)] = 0) -> list[SignedRoot]:
    """The trust roots newer than version ``after``, oldest first (the chain a device walks)."""
    return trust.roots_after(session, after or None)


@api.get("/trust/root", tags=["keys"])
def show_root(session: SessionDep, _: ViewerDep) -> SignedRoot | None:
    """The trust root in force (``null`` before the first push)."""
    return trust.current_root(session)


@api.post("/trust/roots", tags=["keys"], status_code=201)
def push_root(body: SignedRoot, response: Response, controller: ControllerDep, who: AdminDep) -> SignedRoot:
    """Put a trust root signed offline by the root keys: the first one by a threshold of its own root
    keys, each later one the next version, signed by the root keys of the one in force and by its
    own. Every device behind it gets the chain at once (and after its hello, and with its next
    order). The current root again: 200, nothing changes."""
    with controller.session() as session:
        _, created = trust.push_root(session, root=body, actor=who.actor, now=controller.now())
    if created:   # stored first: a device never gets a root the controller does not hold
        controller.adopt_root(body)
        controller.publish_roots()
    else:
        response.status_code = 200
    return body


@api.post("/trust/controller-key/next", tags=["keys"])
def next_controller_key(controller: ControllerDep, _: AdminDep) -> dict[str, str]:
    """The key the controller will sign orders with once a trust root lists it (made on the first
    call, the same one afterwards): what ``edgefleet keys rotate controller`` puts into the next root."""
    key = controller.next_controller_key().public_key()
    return {"key_id": key_id(key), "public_key": raw_public_key(key), "pem": public_key_pem(key).decode()}
