"""The one vocabulary of the wire: every state, outcome, reason code, status and level that a
device and a controller exchange, as ``StrEnum``s (their values are what goes on the wire).
docs/protocol.md describes each; tests tie its tables to these enums.

A ``StrEnum`` member *is* its string: ``UpdateState.IDLE == "idle"``, and it serialises as
``"idle"``. Receivers parse into these enums, so an unknown value is refused where the protocol
fixes the set (states, outcomes), while free-text fields such as ``reason`` stay ``str`` so that a
newer agent's new reason code still reaches an older controller.
"""

from __future__ import annotations

from enum import StrEnum


class UpdateState(StrEnum):
    """The agent's update state machine (docs/protocol.md §7)."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    ACTIVATING = "activating"
    HEALTH_CHECK = "health_check"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    """A ``cancel`` order stopped the update before activation: the old model never stopped serving."""


class Outcome(StrEnum):
    """How one order ended on a device (the final status report)."""

    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"
    REFUSED = "refused"


class Reason(StrEnum):
    """Every machine-readable code EdgeFleet gives: ``reason`` in status reports and deployment
    targets, ``code`` in errors (status reports, REST bodies, MQTT rejection counters, CLI).
    docs/protocol.md §8 lists them all."""

    # untrusted input failed verification (devices refuse; the controller refuses uploads)
    VERIFICATION_FAILED = "verification_failed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    REPLAYED_ORDER = "replayed_order"
    EXPIRED = "expired"
    DIGEST_MISMATCH = "digest_mismatch"
    SIZE_LIMIT = "size_limit"
    TARGET_MISMATCH = "target_mismatch"
    UNSAFE_ARCHIVE = "unsafe_archive"
    URL_REFUSED = "url_refused"
    # bundles signed by a delegated key (docs/security.md §6)
    NOT_DELEGATED = "not_delegated"
    OUTSIDE_DELEGATION = "outside_delegation"
    DELEGATION_EXPIRED = "delegation_expired"
    DELEGATION_REVOKED = "delegation_revoked"
    DELEGATION_ROLLBACK = "delegation_rollback"
    # trust roots (docs/security.md §9)
    ROOT_ROLLBACK = "root_rollback"
    ROOT_CHAIN_BROKEN = "root_chain_broken"
    # malformed wire messages
    MALFORMED_MESSAGE = "malformed_message"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    BAD_TOPIC = "bad_topic"
    DEVICE_MISMATCH = "device_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    UNSIGNED = "unsigned"
    # delivery and downloads
    TRANSPORT_FAILED = "transport_failed"
    TRUNCATED = "truncated"
    STOPPED = "stopped"
    MISSING_DOWNLOAD = "missing_download"
    NO_SPACE = "no_space"
    # the device's update path
    BUSY = "busy"
    INSTALL_FAILED = "install_failed"
    LOAD_FAILED = "load_failed"
    RUNTIME_UNAVAILABLE = "runtime_unavailable"
    SMOKE_TEST_FAILED = "smoke_test_failed"
    NOT_ACTIVE = "not_active"
    LIVE_INFERENCE_FAILED = "live_inference_failed"
    INTERRUPTED = "interrupted"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    ILLEGAL_TRANSITION = "illegal_transition"
    # inference
    INFERENCE_FAILED = "inference_failed"
    BAD_INPUT = "bad_input"
    BAD_MODEL = "bad_model"
    NO_MODEL = "no_model"
    # feedback (labels for served predictions)
    UNKNOWN_PREDICTION = "unknown_prediction"
    ALREADY_LABELLED = "already_labelled"
    BUNDLE_REPLACED = "bundle_replaced"
    # the controller's deployment bookkeeping
    DEPLOYMENT_TIMEOUT = "deployment_timeout"
    SUPERSEDED = "superseded"
    CANCELLED_BY_OPERATOR = "cancelled_by_operator"
    # requests, configuration, compression
    INVALID_REQUEST = "invalid_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    UI_LOGIN_REFUSED = "ui_login_refused"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    BAD_CONFIG = "bad_config"
    INVALID_RECIPE = "invalid_recipe"
    COMPRESSION_FAILED = "compression_failed"
    UNSUPPORTED_MODEL = "unsupported_model"
    ACCURACY_GATE_FAILED = "accuracy_gate_failed"
    # internal: a bug or a failing dependency, logged with its traceback
    INTERNAL_ERROR = "internal_error"
    DECODE_ERROR = "decode_error"
    STORE_ERROR = "store_error"
    INGEST_ERROR = "ingest_error"
    ERROR = "error"


class DeviceStatus(StrEnum):
    """``status`` of a state message: heartbeats say online, the last will says offline."""

    ONLINE = "online"
    OFFLINE = "offline"


class DriftLevel(StrEnum):
    OK = "ok"
    WARN = "warn"
    ALARM = "alarm"
    INSUFFICIENT = "insufficient"
    """Too few samples in the window to judge."""


JUDGED_DRIFT_LEVELS = (DriftLevel.OK, DriftLevel.WARN, DriftLevel.ALARM)
"""Levels that are a verdict (``insufficient`` says nothing about drift)."""


class Runtime(StrEnum):
    """The inference runtime a bundle targets and a device offers."""

    ONNX = "onnx"
    TFLITE = "tflite"


class OrderAction(StrEnum):
    INSTALL = "install"
    CANCEL = "cancel"


class EventLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
