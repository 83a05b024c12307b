"""Bundles: build (reproducibly), sign, read and verify. docs/bundle-format.md is the spec.

A bundle is an uncompressed POSIX ustar archive, members in this order (readers require it: they
verify while they stream, so the signed manifest must come before the files it vouches for):

* ``manifest.json``   -- canonical JSON of :class:`BundleManifest` (the signed bytes)
* ``signatures.json`` -- canonical JSON list of ``{"keyid", "sig"}`` release-key signatures
* ``delegations.json`` -- only in a bundle signed by a delegated key: the signed delegations document
  it was signed under (:mod:`edgefleet.protocol.delegation`)
* ``files/<path>``    -- each file of the manifest, stored raw or zlib-deflated (per file, when
  deflating saves at least 10 %, e.g. pruned weights), never anything else; in format 2 these include
  the smoke-test vectors (``smoke/...npy``) and the reference profile's arrays (``profile/...npy``,
  :mod:`edgefleet.protocol.bundle_arrays`), read through :meth:`VerifiedBundle.smoke_test` and
  :meth:`VerifiedBundle.reference_profile` whatever the format

Every member has mtime 0, uid/gid 0, mode 0644 and no owner names, and files are sorted, so the
same recipe, model and key give byte-identical bundles. One verifier reads every bundle, forward and
once (:mod:`edgefleet.protocol.bundle_reader`): :func:`verify_bundle` over bytes (a pure core: no
disk), :func:`verify_bundle_file` over a file, streamed, its memory independent of the bundle's size.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import tarfile
import tomllib
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.protocol.bundle_arrays import (
    RESERVED,
    SmokeVectors,
    load_profile,
    load_smoke,
    profile_files,
    smoke_files,
)
from edgefleet.protocol.bundle_reader import CHUNK, DELEGATIONS, FILES_DIR, MANIFEST, SIGNATURES, Source, walk
from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.delegation import (
    MAX_DOCUMENT_BYTES,
    DelegatedSigner,
    DelegationCheck,
    check_scope,
    delegated_signer,
    delegations_json,
    parse_delegations,
)
from edgefleet.protocol.drift import DriftThresholds, ReferenceProfile, add_regime, build_profile
from edgefleet.protocol.errors import (
    ArchiveError,
    ConfigError,
    DigestMismatchError,
    SizeLimitError,
    VerificationError,
    first_problem,
)
from edgefleet.protocol.keys import TrustedKeys, sign
from edgefleet.protocol.manifest import (
    BundleManifest,
    CapturePolicy,
    FileEntry,
    Lineage,
    ProfileFiles,
    TargetConstraints,
    parse_semver,
)
from edgefleet.protocol.messages import Signature, SignedDelegations
from edgefleet.protocol.runtimes import TensorSpec, open_session
from edgefleet.protocol.vocabulary import Runtime

DEFLATE_MIN_SAVING = 0.10


def bundle_digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- recipes

class RecipeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BundleSection(RecipeSection):
    # Same rules as the manifest, so a bad name or version is a recipe error, not a build crash.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    version: str
    build: int = Field(ge=0)
    runtime: Runtime
    model: str | None = None
    """Model file, relative to the recipe (the CLI can override it)."""
    description: str = ""
    labels: list[str] | None = None

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        parse_semver(v)
        return v


class SmokeSection(RecipeSection):
    vectors: int = Field(default=4, ge=1, le=64)
    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-3, ge=0)


class ProfileSection(RecipeSection):
    bins: int = Field(default=10, ge=2, le=64)


class TargetSection(TargetConstraints):
    # The manifest's TargetConstraints keep unknown keys (forward compatibility); a recipe must
    # not, or a typo such as ``arch = [...]`` would silently build a bundle for every device.
    model_config = ConfigDict(extra="forbid")

    @field_validator("min_agent_version")
    @classmethod
    def _semver(cls, v: str) -> str:
        parse_semver(v)  # an unparsable version would make every device refuse the bundle
        return v


class DriftSection(DriftThresholds):
    model_config = ConfigDict(extra="forbid")


class CaptureSection(CapturePolicy):
    """``[capture]``: sample capture on the device, off unless ``enabled = true`` (a privacy decision,
    docs/security.md). Copied into the signed manifest, so only a release key can switch it on."""

    model_config = ConfigDict(extra="forbid")


class BundleRecipe(BaseModel):
    """A declarative bundle recipe (TOML in ``firmware-bundles/``)."""

    model_config = ConfigDict(extra="forbid")
    bundle: BundleSection
    target: TargetSection = TargetSection()
    preprocessing: dict[str, Any] = {}
    smoke_test: SmokeSection = SmokeSection()
    profile: ProfileSection = ProfileSection()
    drift: DriftSection = DriftSection()
    compression: dict[str, Any] | None = None
    """Read by ``edgefleet.compression``; carried here untouched."""
    training: dict[str, Any] | None = Field(default=None, exclude_if=lambda v: v is None)
    """Read by the controller's retraining job (docs/retraining.md); carried here untouched, left out
    of the recipe digest when absent."""
    capture: CaptureSection | None = Field(default=None, exclude_if=lambda v: v is None)
    """Left out of the recipe digest when absent, so recipes without it keep their digest."""
    path: Path | None = Field(default=None, exclude=True)

    def model_path(self) -> Path | None:
        if not self.bundle.model:
            return None
        base = self.path.parent if self.path else Path.cwd()
        return (base / self.bundle.model).resolve()

    def digest(self) -> str:
        return bundle_digest(canonical_json(self.model_dump(mode="json", exclude={"path"})))


def parse_recipe(data: dict[str, Any], where: str = "recipe") -> BundleRecipe:
    try:
        return BundleRecipe.model_validate(data)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise ConfigError(problem, where=f"{where}: {loc}") from None


def load_recipe(path: str | Path) -> BundleRecipe:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read recipe: {exc.strerror}", where=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", where=str(path)) from None
    recipe = parse_recipe(data, where=str(path))
    recipe.path = path
    return recipe


# --------------------------------------------------------------------------- building

@dataclass
class BuiltBundle:
    data: bytes
    manifest: BundleManifest
    profile: ReferenceProfile | None = None
    """The reference profile as built (its arrays are files of the bundle)."""
    smoke: SmokeVectors | None = None

    @cached_property
    def digest(self) -> str:
        return bundle_digest(self.data)

    def reference_profile(self) -> ReferenceProfile | None:
        return self.profile

    def smoke_test(self) -> SmokeVectors | None:
        return self.smoke


def _encode(content: bytes) -> tuple[Literal["identity", "deflate"], bytes]:
    packed = zlib.compress(content, 9)
    if len(packed) <= (1 - DEFLATE_MIN_SAVING) * len(content):
        return "deflate", packed
    return "identity", content


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def pack(manifest_bytes: bytes, signatures: list[Signature], stored: dict[str, bytes],
         delegations: bytes | None = None) -> bytes:
    """Write the archive (also used by tests to craft bad bundles)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(*_member(MANIFEST, manifest_bytes))
        tar.addfile(*_member(SIGNATURES, canonical_json([s.model_dump(mode="json") for s in signatures])))
        if delegations is not None:
            tar.addfile(*_member(DELEGATIONS, delegations))
        for path in sorted(stored):
            tar.addfile(*_member(FILES_DIR + path, stored[path]))
        end = tar.offset + 2 * tarfile.BLOCKSIZE
    # Keep the end-of-archive marker, drop tarfile's padding to a 10 KiB record.
    return buf.getvalue()[:end]


def _as_feeds(samples: np.ndarray | dict[str, np.ndarray], inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Samples per input; a flat ``[N, F]`` batch is reshaped to the first input's fixed shape."""
    if isinstance(samples, dict):
        return {k: np.asarray(v) for k, v in samples.items()}
    x = np.asarray(samples)
    dims = inputs[0].shape[1:]
    if len(dims) != x.ndim - 1 and all(isinstance(d, int) for d in dims):
        x = x.reshape(len(x), *dims)
    return {inputs[0].name: x}


def _predicted_classes(first_output: np.ndarray) -> np.ndarray | None:
    """Class indices when the first output is a ``[N, classes]`` score table, else ``None``."""
    if first_output.ndim == 2 and first_output.shape[1] > 1:
        classes: np.ndarray = first_output.argmax(axis=1)
        return classes
    return None


def _archived_size(content: bytes) -> int:
    """Bytes a file adds to the archive: its header block and its (encoded) data in 512-byte blocks."""
    return tarfile.BLOCKSIZE * (1 + -(-len(_encode(content)[1]) // tarfile.BLOCKSIZE))


def _profile_layout(profile: ReferenceProfile) -> tuple[dict[str, bytes], ProfileFiles | None]:
    """The profile's arrays as files when that makes the bundle smaller (many features, many bins,
    regimes), else nothing: it stays inline (a summary profile of 4 features is ~1 KB of JSON, less
    than the archive's blocks for its files)."""
    files, ref = profile_files(profile)
    as_files = sum(_archived_size(c) for c in files.values()) + len(canonical_json(ref.model_dump(mode="json")))
    if as_files < len(canonical_json(profile.model_dump(mode="json"))):
        return files, ref
    return {}, None


def build_bundle(recipe: BundleRecipe, model: bytes, *, samples: np.ndarray | dict[str, np.ndarray],
                 release_key: Ed25519PrivateKey, compression_report: dict[str, Any] | None = None,
                 lineage: Lineage | None = None, extra_files: dict[str, bytes] | None = None,
                 delegations: SignedDelegations | None = None,
                 regimes: Mapping[str, np.ndarray | dict[str, np.ndarray]] | None = None) -> BuiltBundle:
    """Build and sign a bundle. ``samples`` (a batch for the model's first input, or a dict of
    batches per input) feed the reference drift profile and the smoke-test vectors, whose
    expected outputs are computed here with the same runtime code the device uses. ``regimes``
    (name → samples of the same form) are input distributions the model is known to handle besides
    the reference -- the drifted inputs a retrained model learnt from: windows that match one are
    judged against it (protocol/drift.py ``Regime``).

    With ``delegations``, ``release_key`` is a key that document delegates (not a release key): the
    document goes into the bundle (``delegations.json``) so every verifier can check the chain."""
    b = recipe.bundle
    session = open_session(b.runtime, model)
    feeds = _as_feeds(samples, session.inputs)
    first = session.inputs[0].name
    n_smoke = min(recipe.smoke_test.vectors, len(feeds[first]))
    smoke_in = {k: v[:n_smoke] for k, v in feeds.items()}
    outputs = session.run(feeds)
    predictions = _predicted_classes(outputs[session.outputs[0].name])
    profile = build_profile(feeds[first], input_name=first, bins=recipe.profile.bins,
                            predictions=predictions, labels=b.labels,
                            thresholds=DriftThresholds.model_validate(recipe.drift.model_dump()))
    for name, regime_samples in (regimes or {}).items():
        regime_feeds = _as_feeds(regime_samples, session.inputs)
        profile = add_regime(profile, name, regime_feeds[first], labels=b.labels,
                             predictions=_predicted_classes(session.run(regime_feeds)[session.outputs[0].name]))
    model_file = f"model.{b.runtime}"
    reserved = sorted(p for p in extra_files or {} if p.startswith(RESERVED) or p == model_file)
    if reserved:
        raise ConfigError(f"extra files {reserved} use a name the builder writes itself", where="extra_files",
                          hint=f"put them outside {', '.join(RESERVED)} and not at {model_file}")
    smoke_contents, smoke, smoke_vectors = smoke_files(smoke_in, session.run, model_bytes=len(model),
                                                       atol=recipe.smoke_test.atol, rtol=recipe.smoke_test.rtol)
    profile_contents, profile_ref = _profile_layout(profile)
    contents = {model_file: model, **(extra_files or {}), **smoke_contents, **profile_contents}
    stored: dict[str, bytes] = {}
    entries = []
    for path in sorted(contents):
        encoding, packed = _encode(contents[path])
        stored[path] = packed
        entries.append(FileEntry(path=path, size=len(contents[path]), sha256=bundle_digest(contents[path]),
                                 encoding=encoding, stored_size=len(packed)))
    lineage = lineage or Lineage()
    lineage = lineage.model_copy(update={"recipe_digest": lineage.recipe_digest or recipe.digest(),
                                         "source_digest": lineage.source_digest or bundle_digest(model)})
    manifest = BundleManifest(
        name=b.name, version=b.version, build=b.build, runtime=b.runtime, description=b.description,
        target=TargetConstraints.model_validate(recipe.target.model_dump()),
        inputs=session.inputs, outputs=session.outputs,
        preprocessing=recipe.preprocessing, labels=b.labels, model_file=model_file, files=entries,
        reference_profile=None if profile_ref else profile, profile_files=profile_ref, smoke_test=smoke,
        compression=compression_report, lineage=lineage,
        capture=CapturePolicy.model_validate(recipe.capture.model_dump()) if recipe.capture else None)
    manifest_bytes = canonical_json(manifest.model_dump(mode="json"))
    return BuiltBundle(pack(manifest_bytes, [sign(release_key, manifest_bytes)], stored,
                            delegations_json(delegations) if delegations is not None else None), manifest,
                       profile=profile, smoke=smoke_vectors)


def add_signature(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """Return the bundle with one more release signature (for threshold signing, re-signing)."""
    members = _members(memoryview(data), BundleLimits())
    manifest_bytes = bytes(members.pop(MANIFEST))
    sigs = _parse_signatures(bytes(members.pop(SIGNATURES)))
    delegations = members.pop(DELEGATIONS, None)
    new = sign(key, manifest_bytes)
    sigs = [s for s in sigs if s.keyid != new.keyid] + [new]
    stored = {name[len(FILES_DIR):]: bytes(v) for name, v in members.items()}
    return pack(manifest_bytes, sigs, stored, bytes(delegations) if delegations is not None else None)


# --------------------------------------------------------------------------- reading / verifying

class BundleLimits(BaseModel):
    max_bundle_bytes: int = 512 * 1024 * 1024
    max_unpacked_bytes: int = 1024 * 1024 * 1024
    max_files: int = 64
    max_manifest_bytes: int = 4 * 1024 * 1024


@dataclass
class VerifiedBundle:
    manifest: BundleManifest
    files: Mapping[str, bytes]
    """Path -> decoded content: in memory, or :class:`StagedFiles` on disk (``verify_bundle_file(out_dir=...)``)."""
    signed_by: set[str] = field(default_factory=set)
    digest: str | None = None
    delegated: DelegatedSigner | None = None
    """Set when a delegated key signed the bundle: its delegation and the document that holds it."""
    fingerprint: str | None = None
    """sha256 of every byte of the bundle that is not a file's data (bundle_reader.py): a file with this
    fingerprint that verifies holds this bundle, byte for byte but for how a deflated file is deflated.
    What the agent records when it verifies a download, to check its slot's copy without a second pass."""

    @property
    def model(self) -> bytes:
        return self.files[self.manifest.model_file]

    @cached_property
    def _profile(self) -> ReferenceProfile | None:
        return load_profile(self.manifest, self.files)

    @cached_property
    def _smoke(self) -> SmokeVectors | None:
        return load_smoke(self.manifest, self.files)

    def reference_profile(self) -> ReferenceProfile | None:
        """The drift reference profile, inline (format 1) or from the bundle's ``profile/`` files (format 2).
        Raises :class:`VerificationError` when those files do not match what the manifest declares
        (verification has already loaded it once, so a verified bundle does not)."""
        return self._profile

    def smoke_test(self) -> SmokeVectors | None:
        """The smoke-test vectors as arrays, inline (format 1) or from ``smoke/`` files (format 2)."""
        return self._smoke

    def manifest_with_profile(self) -> BundleManifest:
        """The manifest with ``reference_profile`` filled in whatever the format (what the controller
        stores, so its pages read thresholds and predictions without opening the bundle)."""
        return self.manifest.model_copy(update={"reference_profile": self.reference_profile()})


def _buffer(view: memoryview) -> io.BytesIO:
    # BytesIO shares an immutable bytes object instead of copying it
    return io.BytesIO(view.obj if isinstance(view.obj, bytes) and view.nbytes == len(view.obj) else view)


def _members(data: memoryview, limits: BundleLimits) -> dict[str, memoryview]:
    """Member name -> raw bytes of an archive in memory, walked with every archive rule (for
    :func:`read_manifest`, :func:`add_signature` and tests that take bundles apart)."""
    out: dict[str, memoryview] = {}
    with closing(Source(_buffer(data), len(data), digest=False)) as src:
        for info in walk(src, limits.max_files):
            out[info.name] = data[info.offset_data: info.offset_data + info.size]
    return out


def _parse_signatures(raw: bytes) -> list[Signature]:
    try:
        return [Signature.model_validate(s) for s in json.loads(raw)]
    except (ValueError, TypeError, ValidationError):
        raise ArchiveError("signatures.json is malformed", where=SIGNATURES) from None


def _parse_manifest(raw: bytes | memoryview) -> BundleManifest:
    try:
        return BundleManifest.model_validate_json(bytes(raw))
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise VerificationError(f"manifest is invalid: {problem}", where=f"manifest.{loc}") from None


def read_manifest(data: bytes) -> BundleManifest:
    """The manifest WITHOUT any signature check (for ``inspect``); never trust it for installs."""
    return _parse_manifest(_members(memoryview(data), BundleLimits())[MANIFEST])


def verify_bundle(data: bytes | memoryview, *, trusted: TrustedKeys, expected_digest: str | None = None,
                  expected_size: int | None = None, limits: BundleLimits | None = None,
                  delegation: DelegationCheck | None = None) -> VerifiedBundle:
    """Verify the bundle ``data`` completely or raise a :class:`VerificationError` subclass; the files
    come back in memory. The same verifier as :func:`verify_bundle_file` (docs/bundle-format.md §4):

    size bound, then one forward pass over the archive -- release signature over the raw manifest bytes
    (with ``delegation``, a bundle that no threshold of release keys signed may instead be signed by a
    delegated key: the chain is checked before the manifest is parsed, its scope right after), then every
    file's size and sha256 after decoding with a size bound -- and, when the order gave one, the digest
    of the whole bundle, hashed on another core in the same pass. A bundle whose digest differs is
    reported as a digest mismatch whatever else is wrong with it.
    """
    view = memoryview(data)
    with closing(Source(_buffer(view), len(view), digest=expected_digest is not None)) as src:
        return _verify(src, _MemorySink(), trusted=trusted, expected_digest=expected_digest,
                       expected_size=expected_size, limits=limits or BundleLimits(), delegation=delegation)


def verify_bundle_file(path: str | Path, *, trusted: TrustedKeys, expected_digest: str | None = None,
                       expected_size: int | None = None, limits: BundleLimits | None = None,
                       delegation: DelegationCheck | None = None, out_dir: str | Path | None = None,
                       keep_files: bool = True, expected_fingerprint: str | None = None) -> VerifiedBundle:
    """:func:`verify_bundle` for a bundle file, streamed: the archive is read once, forward, a chunk
    at a time, and never held whole, so the memory it takes does not grow with the bundle.

    With ``out_dir`` (a new directory: its parent must exist, it must not) every file is written there
    as it streams (inflated in bounded steps), to a temporary name that becomes its manifest path only
    once its size and sha256 matched; on any refusal the directory and everything in it is removed. The
    returned bundle's ``files`` then read from there when asked for (:class:`StagedFiles`). With
    ``keep_files=False`` every file is checked as it streams and then dropped: ``files`` holds only the
    smoke-test and profile arrays (``smoke/``, ``profile/``), which verification itself reads -- a verdict
    at the cost of one sha256 pass, for a caller that loads the files later from elsewhere. Otherwise
    the files are kept in memory (what a caller that loads the model needs anyway).

    ``expected_fingerprint`` (a :attr:`VerifiedBundle.fingerprint` recorded earlier) binds the file to
    the bundle verified then, as ``expected_digest`` binds it to an order, without hashing the file's
    data twice; it is compared once everything else passed (:class:`DigestMismatchError`)."""
    if out_dir is not None and not keep_files:
        raise ConfigError("out_dir keeps the files, keep_files=False drops them", where="verify_bundle_file",
                          hint="pass one of them")
    with open(path, "rb", buffering=0) as fh, \
            closing(Source(fh, os.fstat(fh.fileno()).st_size, digest=expected_digest is not None)) as src:
        sink: _Sink = (_DirectorySink(Path(out_dir)) if out_dir is not None else
                       _MemorySink() if keep_files else _ArraysSink())
        return _verify(src, sink, trusted=trusted, expected_digest=expected_digest, expected_size=expected_size,
                       limits=limits or BundleLimits(), delegation=delegation,
                       expected_fingerprint=expected_fingerprint)


def _check_digest(digest: str, expected: str) -> None:
    if digest != expected:
        raise DigestMismatchError(f"bundle sha256 {digest[:16]}... differs from the signed {expected[:16]}...",
                                  where="bundle", hint="the download was altered or is the wrong file")


def _check_fingerprint(fingerprint: str, expected: str) -> None:
    if fingerprint != expected:
        raise DigestMismatchError(f"bundle fingerprint {fingerprint[:16]}... differs from the {expected[:16]}... "
                                  "recorded when it was verified", where="bundle",
                                  hint="the file changed since it was verified (storage fault or tampering)")


def _verify(src: Source, sink: _Sink, *, trusted: TrustedKeys, expected_digest: str | None,
            expected_size: int | None, limits: BundleLimits, delegation: DelegationCheck | None,
            expected_fingerprint: str | None = None) -> VerifiedBundle:
    """Steps 1-16 of docs/bundle-format.md §4 over ``src``; on any failure ``sink`` is discarded."""
    try:
        if expected_size is not None and src.size != expected_size:
            raise SizeLimitError(f"bundle is {src.size} bytes, the order says {expected_size}", where="bundle")
        if src.size > limits.max_bundle_bytes:
            raise SizeLimitError(f"bundle is {src.size} bytes, limit {limits.max_bundle_bytes}", where="bundle")
        try:
            verified = _verify_stream(src, sink, trusted, limits, delegation)
        except VerificationError:
            if expected_digest is not None:
                _check_digest(src.digest(), expected_digest)
            raise
        if expected_digest is not None:
            _check_digest(src.digest(), expected_digest)
            verified.digest = expected_digest
        verified.fingerprint = src.fingerprint()
        if expected_fingerprint is not None:
            _check_fingerprint(verified.fingerprint, expected_fingerprint)
        return verified
    except BaseException:
        src.quiesce()   # nothing is still writing into what is discarded
        sink.discard()
        raise


def _signers(manifest_raw: bytes, signatures_raw: bytes, embedded: bytes | None, trusted: TrustedKeys,
             delegation: DelegationCheck | None) -> tuple[set[str], DelegatedSigner | None]:
    """Who signed the manifest: a threshold of release keys, else (with ``delegation``, and only in a
    bundle that carries its delegations document) a delegated key."""
    signatures = _parse_signatures(signatures_raw)
    try:
        return trusted.verify(manifest_raw, signatures), None
    except VerificationError:
        if delegation is None or embedded is None:
            raise  # nothing says the bundle is delegated: the release verdict is the precise one
    if len(embedded) > MAX_DOCUMENT_BYTES:
        raise SizeLimitError(f"{DELEGATIONS} is larger than {MAX_DOCUMENT_BYTES} bytes", where=DELEGATIONS)
    signer = delegated_signer(manifest_raw, signatures, embedded=parse_delegations(embedded, where=DELEGATIONS),
                              trusted=trusted, check=delegation)
    return {signer.keyid}, signer


def _verify_stream(src: Source, sink: _Sink, trusted: TrustedKeys, limits: BundleLimits,
                   delegation: DelegationCheck | None) -> VerifiedBundle:
    members = walk(src, limits.max_files)
    manifest_raw, signatures_raw, embedded, first_file = _read_head(src, members, limits)
    signed_by, signer = _signers(manifest_raw, signatures_raw, embedded, trusted, delegation)
    manifest = _parse_manifest(manifest_raw)
    if signer is not None:
        assert delegation is not None  # a delegated signer is only looked for with a check
        check_scope(signer.delegation, name=manifest.name, target_classes=manifest.target.hardware_classes,
                    check=delegation)
    table = _file_table(manifest, limits)
    for info in itertools.chain([first_file] if first_file is not None else [], members):
        entry = table.pop(info.name, None)
        if entry is None:  # walk() lets only files/... through after the head
            raise ArchiveError(f"members not listed in the manifest: {[info.name]}", where="bundle")
        _stream_file(src, info, entry, sink)
    missing = next(iter(table.values()), None)  # in the manifest's order
    if missing is not None:
        raise ArchiveError(f"file {missing.path!r} is missing", where=missing.path)
    verified = VerifiedBundle(manifest=manifest, files=sink.verified(), signed_by=signed_by, delegated=signer)
    verified.reference_profile()  # arrays that do not match the signed manifest refuse the bundle here
    verified.smoke_test()
    return verified


def _read_head(src: Source, members: Iterator[tarfile.TarInfo],
               limits: BundleLimits) -> tuple[bytes, bytes, bytes | None, tarfile.TarInfo | None]:
    """The raw manifest, signatures and (when present) delegations document -- the members walk()
    requires first -- and the member after them. Each is bounded before it is read."""
    info = next(members)  # walk() raises unless the first member is the manifest, the second the signatures
    if info.size > limits.max_manifest_bytes:
        raise SizeLimitError("manifest too large", where=MANIFEST)
    manifest_raw = _read_member(src, info)
    info = next(members)
    if info.size > limits.max_manifest_bytes:
        raise SizeLimitError(f"{SIGNATURES} is larger than {limits.max_manifest_bytes} bytes", where=SIGNATURES)
    signatures_raw = _read_member(src, info)
    after = next(members, None)
    if after is None or after.name != DELEGATIONS:
        return manifest_raw, signatures_raw, None, after
    # Kept up to one byte past its limit: only a delegated bundle reads it, and refuses it then (as before).
    embedded = _read_member(src, after, keep=MAX_DOCUMENT_BYTES + 1)
    return manifest_raw, signatures_raw, embedded, next(members, None)


def _read_member(src: Source, info: tarfile.TarInfo, keep: int | None = None) -> bytes:
    """A (small) member's bytes; with ``keep``, only its first ``keep`` bytes (the rest is read past)."""
    parts: list[bytes] = []
    room = info.size if keep is None else keep
    for chunk in src.chunks(info.offset_data, info.size, where=info.name):
        if room > 0:
            parts.append(bytes(chunk[:room]))
            room -= len(parts[-1])
    return b"".join(parts)


def _file_table(manifest: BundleManifest, limits: BundleLimits) -> dict[str, FileEntry]:
    """Member name -> the manifest's entry for it, after the checks on the file table as a whole."""
    paths = [f.path for f in manifest.files]
    if manifest.model_file not in paths:
        raise VerificationError(f"model file {manifest.model_file!r} is not among the files",
                                where="manifest.model_file")
    clash = _path_clash(paths)
    if clash:
        raise VerificationError(clash, where="manifest.files")
    total = sum(f.size for f in manifest.files)
    if total > limits.max_unpacked_bytes:
        raise SizeLimitError(f"files unpack to {total} bytes, limit {limits.max_unpacked_bytes}",
                             where="manifest.files")
    return {FILES_DIR + f.path: f for f in manifest.files}


def _path_clash(paths: list[str]) -> str | None:
    """Why these file paths cannot all be files of one directory tree (a path listed twice, or a path that
    is also another's directory), or None."""
    listed: set[str] = set()
    for path in paths:
        if path in listed:
            return f"file {path!r} is listed twice"
        listed.add(path)
    for path in paths:
        parts = path.split("/")
        parent = next((d for d in ("/".join(parts[:i]) for i in range(1, len(parts))) if d in listed), None)
        if parent is not None:
            return f"file {parent!r} is also the directory of {path!r}"
    return None


def _stream_file(src: Source, info: tarfile.TarInfo, entry: FileEntry, sink: _Sink) -> None:
    """Steps 13-15 for one member: decode it as it streams into ``sink``, hash it, keep it if it matches."""
    if info.size != entry.stored_size:
        raise DigestMismatchError(f"stored size {info.size} != manifest {entry.stored_size}", where=entry.path)
    chunks: Iterator[memoryview | bytes]
    if entry.encoding == "deflate":
        chunks = _inflate(src.chunks(info.offset_data, info.size, where=entry.path, payload=True), entry.size,
                          entry.path)
    elif sink.streams(entry.path):
        chunks = src.chunks(info.offset_data, info.size, where=entry.path, payload=True)
    else:   # kept in memory anyway: read in one piece, the one copy it takes
        chunks = iter([src.take(info.offset_data, info.size, where=entry.path)])
    write = sink.begin(entry.path, entry.size)
    sha, size = hashlib.sha256(), 0
    for piece in chunks:
        if sink.background:
            src.later(write, piece)   # written on another thread while this one hashes
        else:
            write(piece)
        sha.update(piece)
        size += len(piece)
    src.settle()
    if size != entry.size or sha.hexdigest() != entry.sha256:
        raise DigestMismatchError("file content does not match the signed manifest", where=entry.path)
    sink.keep(entry.path)


def _inflate(stored: Iterator[memoryview | bytes], size: int, where: str) -> Iterator[bytes]:
    """The zlib stream ``stored`` inflated at most :data:`CHUNK` bytes at a time; one byte past ``size``
    refuses it (a deflate bomb stops there)."""
    d = zlib.decompressobj()
    done = 0
    for chunk in stored:
        data: memoryview | bytes = chunk
        while data:
            try:
                out = d.decompress(data, min(CHUNK, size + 1 - done))
            except zlib.error:
                raise ArchiveError("corrupt deflate stream", where=where) from None
            done += len(out)
            if done > size:
                raise SizeLimitError("file inflates past its signed size", where=where)
            if out:
                yield out
            data = d.unconsumed_tail


# --------------------------------------------------------------------------- where verified files go

class _Sink(Protocol):
    background: bool
    """Whether its writes are worth a thread of their own (they release the GIL)."""

    def streams(self, path: str) -> bool:
        """Whether the file ``path`` is better read a chunk at a time than in one piece."""

    def begin(self, path: str, size: int) -> Callable[[memoryview | bytes], object]:
        """Start the file ``path`` of ``size`` bytes (if it matches); returns the function its decoded bytes
        are written with."""

    def keep(self, path: str) -> None:
        """The file just written matched the manifest."""

    def verified(self) -> Mapping[str, bytes]:
        """The kept files."""

    def discard(self) -> None:
        """Verification failed: forget everything."""


class _MemorySink:
    background = False   # a copy into memory holds the GIL: another thread would only wait for it

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self._open = io.BytesIO()
        self._whole: bytes | None = None

    def streams(self, path: str) -> bool:
        return False

    def begin(self, path: str, size: int) -> Callable[[memoryview | bytes], object]:
        self._open, self._whole = io.BytesIO(), None

        def write(piece: memoryview | bytes) -> None:
            if isinstance(piece, bytes) and len(piece) == size and self._whole is None and not self._open.tell():
                self._whole = piece   # the whole file in one piece: kept as it is, not copied
            else:
                self._open.write(piece)
        return write

    def keep(self, path: str) -> None:
        # BytesIO hands over its buffer without a copy
        self._files[path] = self._whole if self._whole is not None else self._open.getvalue()
        self._open, self._whole = io.BytesIO(), None

    def verified(self) -> Mapping[str, bytes]:
        return self._files

    def discard(self) -> None:
        self._files.clear()
        self._open, self._whole = io.BytesIO(), None


class _ArraysSink(_MemorySink):
    """Keeps only the arrays verification reads (``smoke/``, ``profile/``); every other file is hashed as
    it streams by and dropped (``verify_bundle_file(keep_files=False)``)."""

    _dropping = False

    def streams(self, path: str) -> bool:
        return not path.startswith(RESERVED)

    def begin(self, path: str, size: int) -> Callable[[memoryview | bytes], object]:
        self._dropping = not path.startswith(RESERVED)
        return _drop if self._dropping else super().begin(path, size)

    def keep(self, path: str) -> None:
        if not self._dropping:
            super().keep(path)


def _drop(piece: memoryview | bytes) -> None:
    """Where the bytes of a file that is only checked go."""


class _DirectorySink:
    """Files under ``root`` (created here: its parent must exist, it must not): each written to
    ``root/~partial`` (``~`` is in no manifest path) and renamed to its path once it matched; on failure
    ``root`` is removed, so nothing is left outside it or in it. Not fsynced: a staging area, written
    again by the next verification after a crash."""

    background = True

    def streams(self, path: str) -> bool:
        return True

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        self._partial = root / "~partial"
        self._fh: BinaryIO | None = None
        self._kept: list[str] = []

    def begin(self, path: str, size: int) -> Callable[[memoryview | bytes], object]:
        self._fh = open(self._partial, "wb")  # noqa: SIM115 (closed in keep/discard)
        return self._fh.write

    def keep(self, path: str) -> None:
        assert self._fh is not None
        self._fh.close()
        self._fh = None
        target = self.root.joinpath(*path.split("/"))  # a manifest path: no "..", no "." (FileEntry)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._partial, target)
        self._kept.append(path)

    def verified(self) -> Mapping[str, bytes]:
        return StagedFiles(self.root, self._kept)

    def discard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        shutil.rmtree(self.root, ignore_errors=True)


class StagedFiles(Mapping[str, bytes]):
    """The verified files of a bundle verified into a directory, read from disk when asked for: only what
    a caller uses is ever in memory. :meth:`path` says where one is."""

    def __init__(self, root: Path, paths: list[str]) -> None:
        self.root = root
        self._paths = dict.fromkeys(paths)

    def path(self, name: str) -> Path:
        if name not in self._paths:
            raise KeyError(name)
        return self.root.joinpath(*name.split("/"))

    def __getitem__(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)
