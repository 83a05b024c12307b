"""EdgeFleet's wire contract, shared by the agent, the controller and compression: topics and typed
messages, their vocabulary, signed orders, the bundle format, keys, drift statistics, runtime
adapters, and the one error hierarchy (docs/protocol.md, docs/bundle-format.md).

The names below load on first use (:mod:`exports`), so importing one module of the package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.protocol.exports import homes, lazy

if TYPE_CHECKING:
    from edgefleet.protocol.brokers import BrokerAddress, parse_broker_url
    from edgefleet.protocol.bundle import (
        BundleLimits,
        BundleRecipe,
        VerifiedBundle,
        build_bundle,
        bundle_digest,
        load_recipe,
        parse_recipe,
        read_manifest,
        verify_bundle,
        verify_bundle_file,
    )
    from edgefleet.protocol.drift import ReferenceProfile, build_profile, score
    from edgefleet.protocol.errors import ConfigError, EdgeFleetError, MessageError, TransportError, VerificationError
    from edgefleet.protocol.files import atomic_write
    from edgefleet.protocol.keys import (
        TrustedKeys,
        generate_private_key,
        key_id,
        load_private_key,
        load_public_key,
        save_private_key,
        save_public_key,
    )
    from edgefleet.protocol.manifest import BundleManifest, DeviceFacts, Lineage, check_target
    from edgefleet.protocol.messages import (
        DeploymentOrder,
        Event,
        HealthCheck,
        Hello,
        OrderMessage,
        SignedOrder,
        State,
        StatusReport,
        TelemetryWindow,
        decode,
        encode,
    )
    from edgefleet.protocol.orders import sign_order, verify_order
    from edgefleet.protocol.runtimes import available_runtimes, open_session
    from edgefleet.protocol.vocabulary import (
        DeviceStatus,
        DriftLevel,
        EventLevel,
        OrderAction,
        Outcome,
        Reason,
        Runtime,
        UpdateState,
    )

_HOME = homes(
    brokers=("BrokerAddress", "parse_broker_url"),
    bundle=("BundleLimits", "BundleRecipe", "VerifiedBundle", "build_bundle", "bundle_digest", "load_recipe",
            "parse_recipe", "read_manifest", "verify_bundle", "verify_bundle_file"),
    drift=("ReferenceProfile", "build_profile", "score"),
    errors=("ConfigError", "EdgeFleetError", "MessageError", "TransportError", "VerificationError"),
    files=("atomic_write",),
    keys=("TrustedKeys", "generate_private_key", "key_id", "load_private_key", "load_public_key", "save_private_key",
          "save_public_key"),
    manifest=("BundleManifest", "DeviceFacts", "Lineage", "check_target"),
    messages=("DeploymentOrder", "Event", "HealthCheck", "Hello", "OrderMessage", "SignedOrder", "State",
              "StatusReport", "TelemetryWindow", "decode", "encode"),
    orders=("sign_order", "verify_order"),
    runtimes=("available_runtimes", "open_session"),
    vocabulary=("DeviceStatus", "DriftLevel", "EventLevel", "OrderAction", "Outcome", "Reason", "Runtime",
                "UpdateState"),
)
__all__ = ["BrokerAddress", "BundleLimits", "BundleManifest", "BundleRecipe", "ConfigError", "DeploymentOrder",
           "DeviceFacts", "DeviceStatus", "DriftLevel", "EdgeFleetError", "Event", "EventLevel", "HealthCheck",
           "Hello", "Lineage", "MessageError", "OrderAction", "OrderMessage", "Outcome", "Reason", "ReferenceProfile",
           "Runtime", "SignedOrder", "State", "StatusReport", "TelemetryWindow", "TransportError", "TrustedKeys",
           "UpdateState", "VerificationError", "VerifiedBundle", "atomic_write", "available_runtimes",
           "build_bundle", "build_profile", "bundle_digest", "check_target", "decode", "encode",
           "generate_private_key", "key_id", "load_private_key", "load_public_key", "load_recipe", "open_session",
           "parse_broker_url", "parse_recipe", "read_manifest", "save_private_key", "save_public_key", "score",
           "sign_order", "verify_bundle", "verify_bundle_file", "verify_order"]
__getattr__ = lazy(__name__, globals(), _HOME)
