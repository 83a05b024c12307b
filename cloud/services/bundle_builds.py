"""Build and sign a bundle on the controller (opt-in: needs ``release_signing_key_path``).

The bundle is built from a model version's file with a recipe sent as JSON, then registered
through the same path as an upload (:func:`registry.register_bundle`: signature checked against
the trusted release keys, content-addressed storage) and linked to the version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from edgefleet.cloud.services import audit, datasets, registry
from edgefleet.cloud.store.blobs import BlobStore
from edgefleet.cloud.store.tables import Bundle, ModelVersion
from edgefleet.protocol.bundle import build_bundle, parse_recipe
from edgefleet.protocol.errors import ConfigError, ConflictError, InvalidRequestError
from edgefleet.protocol.keys import TrustedKeys, key_id
from edgefleet.protocol.manifest import Lineage
from edgefleet.protocol.messages import SignedDelegations
from edgefleet.protocol.vocabulary import Reason


def build_and_register(session: Session, *, model_name: str, version: str, recipe: dict[str, Any], data: str,
                       key: Ed25519PrivateKey | None, trusted: TrustedKeys, artifacts: BlobStore, bundles: BlobStore,
                       max_bundle_bytes: int, max_dataset_bytes: int, actor: str,
                       now: float, delegations: SignedDelegations | None = None,
                       regimes: Mapping[str, dict[str, np.ndarray]] | None = None) -> tuple[Bundle, bool]:
    """Returns ``(bundle, created)``; a rebuild of the same recipe and model is byte-identical and
    returns the stored bundle. Runs in the caller's thread: small models build in well under a second.
    With ``delegations``, ``key`` is a delegated key (:func:`trust.bundle_signer` gives both) and the
    document goes into the bundle. ``regimes`` go into its reference profile (protocol/bundle.py)."""
    if key is None:
        raise ConflictError("this controller does not build bundles: it holds no release signing key",
                            where="release_signing_key_path",
                            hint="build and sign with `edgefleet bundle build` and upload, or set "
                                 "EDGEFLEET_RELEASE_SIGNING_KEY_PATH (opt-in, see docs/security.md)")
    kid = key_id(key.public_key())
    if delegations is None and kid not in trusted.keys:
        raise ConflictError(f"the controller's release signing key {kid[:16]}... is not a trusted release key, "
                            "so its bundles would be refused", where="release_signing_key_path",
                            hint="trust its public key: add it to release_key_paths or POST /api/v1/release-keys")
    row = registry.get_model_version(session, model_name=model_name, version=version)
    if row.artifact_digest is None:
        raise ConflictError(f"{model_name}@{version} has no model file to bundle", where="version",
                            hint=f"upload it first: PUT /api/v1/models/{model_name}/versions/{version}/artifact")
    try:
        parsed = parse_recipe(recipe, where="recipe")
    except ConfigError as exc:
        raise InvalidRequestError(exc.message, code=Reason.INVALID_RECIPE, where=exc.where) from None
    if parsed.bundle.model is not None:
        raise InvalidRequestError("bundle.model names a file; a server build packs the version's model file",
                                  where="bundle.model", hint="leave bundle.model out")
    if parsed.bundle.runtime != row.format:
        raise ConflictError(f"bundle.runtime is {parsed.bundle.runtime!r} but {model_name}@{version} is "
                            f"{row.format!r}", where="bundle.runtime")
    samples = datasets.load_samples(session, model_name=model_name, data=data, store=artifacts,
                                    max_unpacked=max_dataset_bytes)
    parent = session.get(ModelVersion, row.parent_id) if row.parent_id is not None else None
    built = build_bundle(parsed, artifacts.open_path(row.artifact_digest).read_bytes(), samples=samples.calibration,
                         release_key=key, compression_report=row.report,
                         lineage=Lineage(parent_digest=parent.artifact_digest if parent else None,
                                         source=f"controller build of {model_name}@{version}"),
                         delegations=delegations, regimes=regimes)
    bundle, created = registry.register_bundle(session, incoming=bundles.put(built.data), store=bundles,
                                               trusted=trusted, max_bytes=max_bundle_bytes, model_name=model_name,
                                               model_version=version, actor=actor, now=now)
    if created:
        audit.record(session, actor=actor, action="bundle.build", target=f"bundle:{bundle.digest}",
                     details={"model": model_name, "version": version, "data": data, "signed_by": kid}, now=now)
    return bundle, created
