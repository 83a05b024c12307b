"""The bundle manifest: everything a device needs to decide whether to install a bundle and to
prove, after installing it, that it works. Signed by a release key (see ``bundle.py``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgefleet.protocol.drift import ReferenceProfile
from edgefleet.protocol.errors import TargetMismatchError
from edgefleet.protocol.messages import Sha256Hex
from edgefleet.protocol.runtimes import TensorSpec
from edgefleet.protocol.vocabulary import Reason, Runtime

FORMAT_VERSION = 1
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
        if not _SAFE_PATH.match(v) or any(part in {".", ".."} for part in v.split("/")):
            raise ValueError(f"unsafe file path {v!r}")
        return v


class SmokeTest(Model):
    """Inputs with the outputs the release's own runtime produced; a device must reproduce
    them within ``|got - expected| <= atol + rtol * |expected|`` before it commits."""

    inputs: dict[str, list[Any]]
    expected: dict[str, list[Any]]
    atol: float = 1e-4
    rtol: float = 1e-3


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
