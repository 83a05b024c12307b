"""Models, model versions (lineage) and bundles.

Lineage: a source :class:`ModelVersion` (as trained), compressed variants pointing at it
(``parent_id``), and bundles pointing at the version whose model file they pack (linked
explicitly on upload, or found by the manifest's ``lineage.source_digest``).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit, trust
from edgefleet.cloud.store.blobs import BlobStore, Incoming
from edgefleet.cloud.store.tables import Bundle, Deployment, Model, ModelVersion, row_id
from edgefleet.cloud.vocabulary import ModelKind
from edgefleet.protocol.bundle import BundleLimits, verify_bundle
from edgefleet.protocol.errors import ConflictError, NotFoundError
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.vocabulary import Runtime

log = logging.getLogger(__name__)



def create_model(session: Session, *, name: str, description: str = "", actor: str, now: float) -> Model:
    if session.exec(select(Model).where(Model.name == name)).first() is not None:
        raise ConflictError(f"model {name!r} already exists", where="name")
    model = Model(name=name, description=description, created_at=now, created_by=actor)
    session.add(model)
    session.flush()
    audit.record(session, actor=actor, action="model.create", target=f"model:{name}", now=now)
    return model


def list_models(session: Session) -> list[Model]:
    return list(session.exec(select(Model).order_by(Model.name)))


def get_model(session: Session, *, name: str) -> Model:
    model = session.exec(select(Model).where(Model.name == name)).first()
    if model is None:
        raise NotFoundError(f"no model {name!r}", where="model")
    return model


def create_model_version(session: Session, *, model_name: str, version: str, kind: ModelKind = ModelKind.SOURCE,
                         parent_version: str | None = None, format: Runtime = Runtime.ONNX,
                         report: dict[str, Any] | None = None, lineage: dict[str, Any] | None = None,
                         actor: str, now: float) -> ModelVersion:
    """``lineage``: where the version came from (a retraining job's ``parent``, ``incident``, ``datasets``,
    ``job``; free-form for an external pipeline), shown with the version and in :func:`lineage`."""
    model = get_model(session, name=model_name)
    if session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                               ModelVersion.version == version)).first() is not None:
        raise ConflictError(f"model {model_name!r} already has version {version!r}", where="version")
    parent_id = None
    if parent_version is not None:
        parent_id = get_model_version(session, model_name=model_name, version=parent_version).id
    elif kind == ModelKind.COMPRESSED:
        raise ConflictError("a compressed version needs its parent version", where="parent")
    row = ModelVersion(model_id=row_id(model), version=version, kind=kind, parent_id=parent_id, format=format,
                       report=report, lineage=lineage, created_at=now, created_by=actor)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="model_version.create", target=f"model:{model_name}@{version}",
                 details={"kind": kind, "parent": parent_version, **({"lineage": lineage} if lineage else {})},
                 now=now)
    return row


def get_model_version(session: Session, *, model_name: str, version: str) -> ModelVersion:
    model = get_model(session, name=model_name)
    row = session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                  ModelVersion.version == version)).first()
    if row is None:
        raise NotFoundError(f"model {model_name!r} has no version {version!r}", where="version")
    return row


def list_model_versions(session: Session, *, model_name: str) -> list[ModelVersion]:
    model = get_model(session, name=model_name)
    return list(session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id)
                             .order_by(col(ModelVersion.id))))


def attach_artifact(session: Session, *, model_name: str, version: str, incoming: Incoming, store: BlobStore,
                    actor: str, now: float) -> ModelVersion:
    """Store the model file of a version (once; a different file for the same version is a conflict)."""
    row = get_model_version(session, model_name=model_name, version=version)
    if row.artifact_digest not in (None, incoming.digest):
        store.discard(incoming)
        raise ConflictError(f"version {version!r} already has a different model file", where="body")
    store.commit(incoming)
    row.artifact_digest, row.artifact_size = incoming.digest, incoming.size
    session.add(row)
    audit.record(session, actor=actor, action="model_version.artifact", target=f"model:{model_name}@{version}",
                 details={"digest": incoming.digest, "size": incoming.size}, now=now)
    return row


def lineage(session: Session, *, model_name: str) -> list[dict[str, Any]]:
    """Versions of a model as a forest: each with its children (compressed variants, retrained versions)
    and its bundles, and the ``lineage`` it was registered with."""
    versions = list_model_versions(session, model_name=model_name)
    ids = [v.id for v in versions]
    bundles = list(session.exec(select(Bundle).where(col(Bundle.model_version_id).in_(ids)))) if ids else []
    nodes: dict[int | None, dict[str, Any]] = {
        v.id: {"version": v.version, "kind": v.kind, "format": v.format, "artifact_digest": v.artifact_digest,
               "lineage": v.lineage, "children": [], "bundles": []} for v in versions}
    for b in bundles:
        nodes[b.model_version_id]["bundles"].append({"digest": b.digest, "name": b.name, "version": b.version,
                                                     "build": b.build, "runtime": b.runtime})
    roots: list[dict[str, Any]] = []
    for v in versions:
        (nodes[v.parent_id]["children"] if v.parent_id in nodes else roots).append(nodes[v.id])
    return roots


def register_bundle(session: Session, *, incoming: Incoming, store: BlobStore, trusted: TrustedKeys,
                    max_bytes: int, model_name: str | None = None, model_version: str | None = None,
                    actor: str, now: float) -> tuple[Bundle, bool]:
    """Verify an uploaded bundle (release signature, or a delegated key's under the current delegations
    document; archive, every file) and store it.

    Returns ``(bundle, created)``; uploading the same bytes again returns the existing row.
    Nothing is stored when verification fails.
    """
    existing = session.exec(select(Bundle).where(Bundle.digest == incoming.digest)).first()
    if existing is not None:
        store.discard(incoming)
        return existing, False
    try:
        verified = verify_bundle(incoming.read(), trusted=trusted, expected_digest=incoming.digest,
                                 limits=BundleLimits(max_bundle_bytes=max_bytes),
                                 delegation=trust.delegation_check(session, now=now))
    except BaseException:
        store.discard(incoming)
        raise
    manifest = verified.manifest
    clash = session.exec(select(Bundle).where(Bundle.name == manifest.name, Bundle.build == manifest.build)).first()
    if clash is not None:
        store.discard(incoming)
        raise ConflictError(f"bundle {manifest.name!r} build {manifest.build} already exists with another digest",
                            where="manifest.build", hint="every release needs a new, higher build number")
    version_row = _version_for_bundle(session, manifest_source=manifest.lineage.source_digest,
                                      model_name=model_name, model_version=model_version)
    store.commit(incoming)
    bundle = Bundle(digest=incoming.digest, name=manifest.name, version=manifest.version, build=manifest.build,
                    runtime=manifest.runtime, size=incoming.size,
                    # the profile filled in (format 2 keeps its arrays in files): pages read it from the row
                    manifest=verified.manifest_with_profile().model_dump(mode="json"),
                    model_version_id=version_row.id if version_row else None, uploaded_at=now, uploaded_by=actor)
    session.add(bundle)
    session.flush()
    audit.record(session, actor=actor, action="bundle.upload", target=f"bundle:{incoming.digest}",
                 details={"name": manifest.name, "version": manifest.version, "build": manifest.build,
                          "signed_by": sorted(verified.signed_by),
                          **({"delegation": verified.delegated.delegation.name,
                              "delegations_version": verified.delegated.document.signed.version}
                             if verified.delegated else {})}, now=now)
    log.info("bundle %s %s build %d stored (%s, %d bytes)", manifest.name, manifest.version, manifest.build,
             incoming.digest[:12], incoming.size)
    return bundle, True


def _version_for_bundle(session: Session, *, manifest_source: str | None, model_name: str | None,
                        model_version: str | None) -> ModelVersion | None:
    if model_name and model_version:
        return get_model_version(session, model_name=model_name, version=model_version)
    if model_name or model_version:
        raise ConflictError("give both model and model_version, or neither", where="model_version")
    if manifest_source:
        return session.exec(select(ModelVersion).where(ModelVersion.artifact_digest == manifest_source)).first()
    return None


def list_bundles(session: Session, *, name: str | None = None) -> list[Bundle]:
    query = select(Bundle).order_by(col(Bundle.name), col(Bundle.build).desc())
    if name:
        query = query.where(Bundle.name == name)
    return list(session.exec(query))


def bundles_by_digest(session: Session, *, digests: set[str]) -> dict[str, Bundle]:
    if not digests:
        return {}
    return {b.digest: b for b in session.exec(select(Bundle).where(col(Bundle.digest).in_(digests)))}


def bundles_by_id(session: Session, *, ids: set[int]) -> dict[int, Bundle]:
    if not ids:
        return {}
    return {b.id: b for b in session.exec(select(Bundle).where(col(Bundle.id).in_(ids))) if b.id is not None}


def version_labels(session: Session, *, ids: set[int]) -> dict[int, str]:
    """``model@version`` of each model version id."""
    if not ids:
        return {}
    rows = session.exec(select(ModelVersion, Model).join(Model, col(Model.id) == ModelVersion.model_id)
                        .where(col(ModelVersion.id).in_(ids)))
    return {v.id: f"{m.name}@{v.version}" for v, m in rows if v.id is not None}


def model_name_of_version(session: Session, *, version_id: int | None) -> str | None:
    if version_id is None:
        return None
    return session.exec(select(Model.name).join(ModelVersion, col(Model.id) == ModelVersion.model_id)
                        .where(ModelVersion.id == version_id)).first()


def get_bundle(session: Session, *, digest: str) -> Bundle:
    """A bundle by its full sha256, or by a unique prefix of at least 8 hex digits."""
    bundle = session.exec(select(Bundle).where(Bundle.digest == digest)).first()
    if bundle is None and 8 <= len(digest) < 64:
        matches = list(session.exec(select(Bundle).where(col(Bundle.digest).startswith(digest)).limit(2)))
        if len(matches) > 1:
            raise ConflictError(f"digest prefix {digest!r} is ambiguous", where="digest")
        bundle = matches[0] if matches else None
    if bundle is None:
        raise NotFoundError(f"no bundle {digest!r}", where="digest")
    return bundle


def delete_bundle(session: Session, *, digest: str, store: BlobStore, actor: str, now: float) -> None:
    bundle = get_bundle(session, digest=digest)
    if session.exec(select(Deployment).where(Deployment.bundle_id == bundle.id)).first() is not None:
        raise ConflictError(f"bundle {bundle.digest[:12]} is used by deployments", where="digest")
    session.delete(bundle)
    session.flush()               # fails here (not after the file is gone) if the row cannot go
    store.delete(bundle.digest)
    audit.record(session, actor=actor, action="bundle.delete", target=f"bundle:{bundle.digest}", now=now)
