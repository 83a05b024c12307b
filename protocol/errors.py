"""The one exception hierarchy of EdgeFleet.

Everything we raise derives from :class:`EdgeFleetError`. The hierarchy is split by who is at
fault, so callers can react without parsing text:

* :class:`VerificationError` -- untrusted input failed a check (bad signature, replayed order,
  tampered archive, ...). Never retried: the same bytes fail again.
* :class:`MessageError` -- a wire message is malformed or too large.
* :class:`InvalidRequestError` -- a request to the controller's API is invalid.
* :class:`TransportError` -- delivery failed (broker down, HTTP error, truncated download).
  Usually retried with backoff.
* :class:`ConfigError` -- a configuration value is wrong; names the key.
* :class:`CompressionError` -- a model cannot be compressed/exported, or failed its gate.
* :class:`RuntimeUnavailableError` -- the device lacks the inference runtime a bundle needs.

Exceptions carry fields (``code``, ``where``, ``hint``) and not only text. Third-party
exceptions are translated at the boundary only.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from edgefleet.protocol.vocabulary import Reason


class EdgeFleetError(Exception):
    """Root of every EdgeFleet error.

    ``code`` is a stable machine-readable reason (used in status reports and HTTP bodies),
    ``where`` names the file, key, topic or field at fault, ``hint`` says what to do.
    """

    code: str = Reason.ERROR

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

    code: str = Reason.VERIFICATION_FAILED


class SignatureError(VerificationError):
    code: str = Reason.BAD_SIGNATURE


class UnknownKeyError(VerificationError):
    code: str = Reason.UNKNOWN_KEY


class ReplayError(VerificationError):
    """An order whose sequence number does not increase (replayed or stale)."""

    code: str = Reason.REPLAYED_ORDER


class ExpiredError(VerificationError):
    code: str = Reason.EXPIRED


class DigestMismatchError(VerificationError):
    code: str = Reason.DIGEST_MISMATCH


class SizeLimitError(VerificationError):
    """More bytes than the signed or configured bound."""

    code: str = Reason.SIZE_LIMIT


class TargetMismatchError(VerificationError):
    """A bundle for another device class, architecture, runtime or agent version."""

    code: str = Reason.TARGET_MISMATCH


class ArchiveError(VerificationError):
    """An archive member is unsafe (absolute path, ``..``, link, device) or malformed."""

    code: str = Reason.UNSAFE_ARCHIVE


class DelegationError(VerificationError):
    """A bundle signed by a delegated key is outside what its delegation allows (name pattern,
    hardware class), or the delegation chain itself does not hold (docs/security.md §6)."""

    code: str = Reason.OUTSIDE_DELEGATION


class NotDelegatedError(DelegationError):
    """No signature by a key the delegations document delegates."""

    code: str = Reason.NOT_DELEGATED


class DelegationExpiredError(DelegationError):
    """The delegation, or the whole delegations document, has expired."""

    code: str = Reason.DELEGATION_EXPIRED


class DelegationRevokedError(DelegationError):
    """The signing key was delegated in an older document that a newer accepted one replaced without it."""

    code: str = Reason.DELEGATION_REVOKED


class DelegationRollbackError(DelegationError):
    """A delegations document older than the one already accepted (or another one of the same version)."""

    code: str = Reason.DELEGATION_ROLLBACK


class RootError(VerificationError):
    """A trust root that does not continue the chain a verifier holds: a version gap, or the
    threshold of the previous or its own root keys missing (docs/security.md §9)."""

    code: str = Reason.ROOT_CHAIN_BROKEN


class RootRollbackError(RootError):
    """A trust root older than the one accepted, or another one with the same version."""

    code: str = Reason.ROOT_ROLLBACK


class MessageError(EdgeFleetError):
    """A wire message is malformed, of the wrong schema or too large."""

    code: str = Reason.MALFORMED_MESSAGE


class InvalidRequestError(EdgeFleetError):
    """A request to the controller (REST body, query, upload) is invalid; ``where`` names the part."""

    code: str = Reason.INVALID_REQUEST


class TransportError(EdgeFleetError):
    """Delivery failed: broker unreachable, HTTP error, truncated download."""

    code: str = Reason.TRANSPORT_FAILED


class NoSpaceError(EdgeFleetError):
    """The device's disk has no room for what must be written (``where`` names the directory); not
    retried: space rarely frees itself."""

    code: str = Reason.NO_SPACE


class ConfigError(EdgeFleetError):
    """A configuration value is missing or wrong. ``where`` names the key (and file)."""

    code: str = Reason.BAD_CONFIG


class CompressionError(EdgeFleetError):
    """A model cannot be compressed or exported."""

    code: str = Reason.COMPRESSION_FAILED


class UnsupportedModelError(CompressionError):
    """The model uses an operator or feature we do not support; ``where`` names it."""

    code: str = Reason.UNSUPPORTED_MODEL


class AccuracyGateError(CompressionError):
    """The compressed model lost more accuracy/fidelity than the gate allows."""

    code: str = Reason.ACCURACY_GATE_FAILED

    def __init__(self, message: str, *, report: dict[str, Any] | None = None, code: str | None = None,
                 where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, code=code, where=where, hint=hint)
        self.report = report


class RuntimeUnavailableError(EdgeFleetError):
    """The inference runtime a bundle needs is not installed on this device."""

    code: str = Reason.RUNTIME_UNAVAILABLE


class InferenceError(EdgeFleetError):
    """Inference failed: bad input shape/dtype or a runtime error."""

    code: str = Reason.INFERENCE_FAILED


class NotFoundError(EdgeFleetError):
    code: str = Reason.NOT_FOUND


class ConflictError(EdgeFleetError):
    code: str = Reason.CONFLICT


def first_problem(exc: ValidationError) -> tuple[str, str]:
    """``(location, message)`` of a pydantic error's first problem, for our one-line errors:
    the location dotted (``bundle.version``), the message without pydantic's prefixes."""
    first = exc.errors()[0]
    return (".".join(str(part) for part in first["loc"]),
            first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, "))
