"""The bundle manifest: everything a device needs to decide whether to install a bundle and to
prove, after installing it, that it works. Signed by a release key (see ``bundle.py``)."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.protocol.drift import ReferenceProfile
from edgefleet.protocol.errors import TargetMismatchError
from edgefleet.protocol.messages import Sha256Hex
from edgefleet.protocol.runtimes import TensorSpec
from edgefleet.protocol.vocabulary import Reason, Runtime

FORMAT_VERSION = 2
"""Written by :func:`~edgefleet.protocol.bundle.build_bundle`: smoke vectors and the reference profile's
arrays are ``.npy`` files of the bundle (docs/bundle-format.md §2.4, §2.3)."""
READABLE_FORMATS = (1, 2)
"""Format 1 (everything inline as JSON) is still verified, installed and read."""
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def parse_semver(version: str) -> tuple[int, int, int]:
    m = _SEMVER.match(version)
    if not m:
        raise ValueError(f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class TargetConstraints(Model):
    archs: list[str] = []
    """Machine architectures (``platform.machine()``) the bundle runs on; empty = any."""
    hardware_classes: list[str] = []
    """Hardware classes (set at enrollment) the bundle is for; empty = any."""
    min_agent_version: str = "0.1.0"


class FileEntry(Model):
    path: str
    size: int = Field(ge=0, description="bytes of the file once decoded")
    sha256: Sha256Hex = Field(description="of the decoded file")
    encoding: Literal["identity", "deflate"] = "identity"
    stored_size: int = Field(ge=0, description="bytes of the archive member")

    @field_validator("path")
    @classmethod
    def _safe(cls, v: str) -> str:
        return _safe_path(v)


def _safe_path(v: str) -> str:
    if not _SAFE_PATH.match(v) or any(part in {".", ".."} for part in v.split("/")):
        raise ValueError(f"unsafe file path {v!r}")
    return v


class ArrayFile(Model):
    """Format 2: an array stored as a ``.npy`` file of the bundle. The file is listed in ``files`` (so its
    size and sha256 are signed); a reader refuses it unless its header says exactly this dtype and shape."""

    file: str
    dtype: str = Field(pattern=r"^(bool|u?int(8|16|32|64)|float(16|32|64))$")
    shape: list[int] = Field(max_length=32)

    @field_validator("file")
    @classmethod
    def _safe(cls, v: str) -> str:
        return _safe_path(v)

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        if any(d < 0 for d in v):
            raise ValueError(f"negative dimension in shape {v}")
        return v


class GeneratedArray(Model):
    """Format 2: smoke-test input values too wide to store (e.g. images for a small model), generated
    on the device instead: ``prod(shape)`` values of splitmix64 from ``seed`` (docs/bundle-format.md
    §2.4 gives the generator), mapped uniformly onto ``[low, high]`` and cast to ``dtype``."""

    generator: Literal["splitmix64-uniform"] = "splitmix64-uniform"
    seed: int = Field(ge=0, lt=2**64)
    low: float
    high: float
    dtype: str = Field(pattern=r"^(bool|u?int(8|16|32|64)|float(16|32|64))$")
    shape: list[int] = Field(max_length=32)

    @model_validator(mode="after")
    def _range(self) -> GeneratedArray:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"generated range [{self.low}, {self.high}] is not a finite interval")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")
        return self


class SmokeTest(Model):
    """Inputs with the outputs the release's own runtime produced; a device must reproduce
    them within ``|got - expected| <= atol + rtol * |expected|`` before it commits.

    Format 1 holds the arrays as nested JSON lists; format 2 names ``.npy`` files of the bundle
    (:class:`ArrayFile`). Read them with ``VerifiedBundle.smoke_test()``, which handles both."""

    inputs: dict[str, list[Any] | ArrayFile | GeneratedArray]
    expected: dict[str, list[Any] | ArrayFile]
    atol: float = 1e-4
    rtol: float = 1e-3

    def vectors(self) -> int:
        """Number of smoke-test vectors (rows of the first input)."""
        first = next(iter(self.inputs.values()), None)
        if first is None:
            return 0
        return len(first) if isinstance(first, list) else (first.shape[0] if first.shape else 1)

    def arrays(self) -> list[ArrayFile]:
        return [v for v in (*self.inputs.values(), *self.expected.values()) if isinstance(v, ArrayFile)]


class ProfileFiles(Model):
    """Format 2: the reference profile with its per-bin arrays in ``.npy`` files of the bundle.
    ``profile`` is the :class:`~edgefleet.protocol.drift.ReferenceProfile` JSON without
    ``features`` and without each regime's ``probs``; the arrays hold them, padded to the widest
    feature's ``B`` bins. Read it with ``VerifiedBundle.reference_profile()``."""

    profile: dict[str, Any]
    bins: ArrayFile
    """int32 ``[F]``: bins of each feature (``len(edges) + 1``)."""
    edges: ArrayFile
    """float32 ``[F, B-1]``: inner bin edges, padded with +inf."""
    probs: ArrayFile
    """float64 ``[F, B]``: reference fraction per bin, padded with 0."""
    regime_probs: ArrayFile
    """float64 ``[R, F, B]``: each regime's fraction per bin, padded with 0 (R = 0 without regimes)."""

    def arrays(self) -> list[ArrayFile]:
        return [self.bins, self.edges, self.probs, self.regime_probs]

    @property
    def features(self) -> int:
        return self.bins.shape[0] if self.bins.shape else 0


class Lineage(Model):
    source_digest: str | None = None
    """sha256 of the model file the bundle was built (or compressed) from."""
    parent_digest: str | None = None
    """sha256 of the parent model version (for a compressed variant, the uncompressed model)."""
    recipe_digest: str | None = None
    source: str | None = None


MiB = 1024 * 1024


class CapturePolicy(Model):
    """Sample capture on the device (docs/bundle-format.md ``[capture]``, docs/security.md): off unless
    the signed manifest says ``enabled``. The device keeps a bounded, drift-weighted reservoir of served
    inputs (with the predicted class and, once fed back, the label) and uploads it to its controller."""

    enabled: bool = Field(default=False, strict=True)
    max_samples: int = Field(default=512, ge=1, le=100_000)
    """Samples kept on the device at most (the reservoir's size)."""
    max_bytes: int = Field(default=8 * MiB, ge=64 * 1024, le=1024 * MiB)
    """Disk the samples and the batch waiting for upload take at most, in bytes."""
    drift_weight: float = Field(default=4.0, ge=1.0, le=1000.0)
    """How much more likely a sample served while the model's latest window was at warn or alarm is kept."""
    min_samples_to_upload: int = Field(default=64, ge=1, le=100_000)
    """A batch is sealed for upload once the reservoir holds this many samples..."""
    upload_interval_s: int = Field(default=3600, ge=1, le=30 * 86_400)
    """...and this long has passed since the last batch (or a window was at alarm)."""

    @model_validator(mode="after")
    def _upload_fits(self) -> CapturePolicy:
        if self.min_samples_to_upload > self.max_samples:
            raise ValueError(f"min_samples_to_upload ({self.min_samples_to_upload}) exceeds max_samples "
                             f"({self.max_samples}): no batch would ever be sealed")
        return self


class BundleManifest(Model):
    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    version: str
    build: int = Field(ge=0, description="monotonic build number")
    runtime: Runtime
    description: str = ""
    target: TargetConstraints = TargetConstraints()
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: dict[str, Any] = {}
    labels: list[str] | None = None
    model_file: str
    files: list[FileEntry]
    reference_profile: ReferenceProfile | None = None
    """Format 1: the whole profile inline. Format 2 builders write ``null`` and use ``profile_files``."""
    profile_files: ProfileFiles | None = Field(default=None, exclude_if=lambda v: v is None)
    """Format 2: the profile with its arrays in files. Left out of the JSON when absent (format 1)."""
    smoke_test: SmokeTest | None = None
    compression: dict[str, Any] | None = None
    lineage: Lineage = Lineage()
    capture: CapturePolicy | None = Field(default=None, exclude_if=lambda v: v is None)
    """Absent: the device captures no samples. Left out of the JSON (and so of the signed bytes) when
    absent, so bundles without it are byte-identical to those built before it existed."""

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        parse_semver(v)
        return v

    @field_validator("format_version")
    @classmethod
    def _readable(cls, v: int) -> int:
        if v not in READABLE_FORMATS:
            raise ValueError(f"bundle format {v} is not one this agent reads ({', '.join(map(str, READABLE_FORMATS))});"
                             " upgrade the agent")
        return v

    @model_validator(mode="after")
    def _layout_of_the_format(self) -> BundleManifest:
        """Format 1 keeps arrays inline, format 2 in files listed in ``files``."""
        smoke = [*self.smoke_test.inputs.values(), *self.smoke_test.expected.values()] if self.smoke_test else []
        if self.format_version == 1:
            if self.profile_files is not None or any(not isinstance(v, list) for v in smoke):
                raise ValueError("a format 1 manifest keeps smoke vectors and profile inline")
            return self
        if any(isinstance(v, list) for v in smoke) or (
                self.smoke_test and any(isinstance(v, GeneratedArray) for v in self.smoke_test.expected.values())):
            raise ValueError("a format 2 manifest names smoke vectors as files, not inline lists")
        listed = {f.path for f in self.files}
        refs = [*(self.smoke_test.arrays() if self.smoke_test else []),
                *(self.profile_files.arrays() if self.profile_files else [])]
        for ref in refs:
            if ref.file not in listed:
                raise ValueError(f"array file {ref.file!r} is not among the files")
        return self

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)


class DeviceFacts(BaseModel):
    arch: str
    runtimes: list[str]
    agent_version: str
    hardware_class: str = "generic"


def check_target(manifest: BundleManifest, facts: DeviceFacts) -> None:
    """Raise :class:`TargetMismatchError` if the device cannot run the bundle."""
    t = manifest.target
    if manifest.runtime not in facts.runtimes:
        raise TargetMismatchError(f"bundle needs runtime {manifest.runtime!r}; device has {facts.runtimes}",
                                  code=Reason.RUNTIME_UNAVAILABLE, where="manifest.runtime",
                                  hint=("install edgefleet[tflite] on the device"
                                        if manifest.runtime == Runtime.TFLITE else None))
    if t.archs and facts.arch not in t.archs:
        raise TargetMismatchError(f"bundle is for {t.archs}; device is {facts.arch}", where="manifest.target.archs")
    if t.hardware_classes and facts.hardware_class not in t.hardware_classes:
        raise TargetMismatchError(f"bundle is for hardware classes {t.hardware_classes}; device is "
                                  f"{facts.hardware_class!r}", where="manifest.target.hardware_classes")
    try:
        too_old = parse_semver(facts.agent_version) < parse_semver(t.min_agent_version)
    except ValueError:
        too_old = True
    if too_old:
        raise TargetMismatchError(f"bundle needs agent >= {t.min_agent_version}; device runs {facts.agent_version}",
                                  where="manifest.target.min_agent_version", hint="upgrade the agent")
