"""The one exception hierarchy of EdgeFleet.

Everything we raise derives from :class:`EdgeFleetError`. The hierarchy is split by who is at
fault, so callers can react without parsing text:

* :class:`VerificationError` -- untrusted input failed a check (bad signature, replayed order,
  tampered archive, ...). Never retried: the same bytes fail again.
* :class:`MessageError` -- a wire message is malformed or too large.
* :class:`TransportError` -- delivery failed (broker down, HTTP error, truncated download).
  Usually retried with backoff.
* :class:`ConfigError` -- a configuration value is wrong; names the key.
* :class:`CompressionError` -- a model cannot be compressed/exported, or failed its gate.
* :class:`RuntimeUnavailableError` -- the device lacks the inference runtime a bundle needs.

Exceptions carry fields (``code``, ``where``, ``hint``) and not only text. Third-party
exceptions are translated at the boundary only.
"""

from __future__ import annotations

from pydantic import ValidationError


class EdgeFleetError(Exception):
    """Root of every EdgeFleet error.

    ``code`` is a stable machine-readable reason (used in status reports and HTTP bodies),
    ``where`` names the file, key, topic or field at fault, ``hint`` says what to do.
    """

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, where: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.where:
            text = f"{self.where}: {text}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return text

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "where": self.where, "hint": self.hint}


class VerificationError(EdgeFleetError):
    """Untrusted input (bundle, order, key announcement) failed verification."""

    code = "verification_failed"


class SignatureError(VerificationError):
    code = "bad_signature"


class UnknownKeyError(VerificationError):
    code = "unknown_key"


class ReplayError(VerificationError):
    """An order whose sequence number does not increase (replayed or stale)."""

    code = "replayed_order"


class ExpiredError(VerificationError):
    code = "expired"


class DigestMismatchError(VerificationError):
    code = "digest_mismatch"


class SizeLimitError(VerificationError):
    """More bytes than the signed or configured bound."""

    code = "size_limit"


class TargetMismatchError(VerificationError):
    """A bundle for another device class, architecture, runtime or agent version."""

    code = "target_mismatch"


class ArchiveError(VerificationError):
    """An archive member is unsafe (absolute path, ``..``, link, device) or malformed."""

    code = "unsafe_archive"


class MessageError(EdgeFleetError):
    """A wire message is malformed, of the wrong schema or too large."""

    code = "malformed_message"


class TransportError(EdgeFleetError):
    """Delivery failed: broker unreachable, HTTP error, truncated download."""

    code = "transport_failed"


class ConfigError(EdgeFleetError):
    """A configuration value is missing or wrong. ``where`` names the key (and file)."""

    code = "bad_config"


class CompressionError(EdgeFleetError):
    """A model cannot be compressed or exported."""

    code = "compression_failed"


class UnsupportedModelError(CompressionError):
    """The model uses an operator or feature we do not support; ``where`` names it."""

    code = "unsupported_model"


class AccuracyGateError(CompressionError):
    """The compressed model lost more accuracy/fidelity than the gate allows."""

    code = "accuracy_gate_failed"

    def __init__(self, message: str, *, report: dict | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.report = report


class RuntimeUnavailableError(EdgeFleetError):
    """The inference runtime a bundle needs is not installed on this device."""

    code = "runtime_unavailable"


class InferenceError(EdgeFleetError):
    """Inference failed: bad input shape/dtype or a runtime error."""

    code = "inference_failed"


class NotFoundError(EdgeFleetError):
    code = "not_found"


class ConflictError(EdgeFleetError):
    code = "conflict"


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """``(location, message)`` of a pydantic error's first problem, for our one-line errors:
    the location dotted (``bundle.version``), the message without pydantic's prefixes."""
    first = exc.errors()[0]
    return (".".join(str(part) for part in first["loc"]),
            first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, "))
