"""The EdgeFleet device agent (``edgefleet-agent``; docs/agent.md): configuration, enrollment, the
daemon, the update state machine and its updater, in-process inference, the durable outbox, and
sample capture with its uploader.
It imports only :mod:`edgefleet.protocol` of EdgeFleet. The names below load on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.protocol.exports import homes, lazy

if TYPE_CHECKING:
    from edgefleet.agent.config import AgentConfig, load_config
    from edgefleet.agent.daemon import Agent, main
    from edgefleet.agent.enroll import enroll_device
    from edgefleet.agent.inference import Prediction, Predictor
    from edgefleet.agent.outbox import Outbox
    from edgefleet.agent.statemachine import TRANSITIONS, UpdateRecord, next_state
    from edgefleet.agent.updater import UpdatePolicy, Updater

_HOME = homes(config=("AgentConfig", "load_config"), daemon=("Agent", "main"), enroll=("enroll_device",),
              inference=("Prediction", "Predictor"), outbox=("Outbox",),
              statemachine=("TRANSITIONS", "UpdateRecord", "next_state"), updater=("UpdatePolicy", "Updater"))
__all__ = ["TRANSITIONS", "Agent", "AgentConfig", "Outbox", "Prediction", "Predictor", "UpdatePolicy", "UpdateRecord",
           "Updater", "enroll_device", "load_config", "main", "next_state"]
__getattr__ = lazy(__name__, globals(), _HOME)
