"""What a simulated fleet is told: one typed settings object (every knob a number with bounds)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class DownloadMode(StrEnum):
    VERIFY = "verify"
    """Verify every downloaded bundle completely (release signature, every file), as the agent does."""
    HASH = "hash"
    """Only check the size and sha256 of the download against the signed order (cheap: for big fleets)."""


class Knobs(BaseModel):
    """The knobs of a run. Rates are per device; times in seconds."""

    model_config = ConfigDict(extra="forbid")

    devices: int = Field(default=100, ge=1, le=100_000)
    device_prefix: str = Field(default="sim", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    """Device ids are ``<prefix>-<n>``: the MQTT client id, so two runs on one broker need two prefixes."""
    heartbeat_s: float = Field(default=30.0, gt=0, le=3600)
    telemetry_s: float = Field(default=60.0, gt=0, le=3600)
    drift_fraction: float = Field(default=0.0, ge=0, le=1)
    """Share of the devices whose inputs drift away from the reference."""
    drift_magnitude: float = Field(default=0.5, ge=0, le=5)
    """How far a drifting device's inputs move, in reference standard deviations."""
    install_failure_rate: float = Field(default=0.0, ge=0, le=1)
    """Probability that an install fails after verification (reported ``failed``, ``load_failed``)."""
    download_mode: DownloadMode = DownloadMode.VERIFY
    verify_fraction: float = Field(default=1.0, ge=0, le=1)
    """With ``verify`` mode: share of the devices that verify fully; the others only hash."""
    latency_s: float = Field(default=0.0, ge=0, le=60)
    """Delay a device adds before each step of an update (download, verify, install)."""
    churn_per_min: float = Field(default=0.0, ge=0, le=60)
    """Expected disconnects (without DISCONNECT: the will fires) per device per minute; each comes back."""
    reconnect_after_s: float = Field(default=2.0, ge=0, le=3600)
    storm_after_s: float | None = Field(default=None, ge=0)
    """Drop every connection at once this long after the fleet is up, then reconnect them all."""
    connect_rate: float = Field(default=500.0, gt=0, le=100_000)
    """New connections per second while ramping up (and coming back from a storm)."""
    download_concurrency: int = Field(default=64, ge=1, le=10_000)
    download_retries: int = Field(default=3, ge=0, le=100)
    """A range request that fails (connection lost, 5xx) is tried again this many times, from where it
    stopped, after 0.5 s, 1 s, ... (the agent resumes a download the same way) before the update fails."""
    chunk_bytes: int = Field(default=64 * 1024, ge=1024)
    """HTTP Range request size: a bundle larger than this downloads in several ranged requests."""
    enroll_concurrency: int = Field(default=16, ge=1, le=1000)
    keepalive_s: int = Field(default=60, ge=5, le=65535)
    seed: int = 0
