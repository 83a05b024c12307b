"""Controller configuration: environment (``EDGEFLEET_*``), an optional TOML file, or keyword
arguments (highest precedence first: arguments, environment, file).

The TOML file is named by ``EDGEFLEET_CONFIG_FILE`` and holds the same keys without the prefix,
e.g. ``database_url = "postgresql+psycopg://..."``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from edgefleet.cloud.vocabulary import BrokerKind
from edgefleet.protocol.topics import DEFAULT_PREFIX

MiB = 1024 * 1024
PersonRole = Literal["viewer", "operator", "approver", "admin"]


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    data_dir: Path = Path(".edgefleet/controller")
    """Holds the SQLite database (by default), the bundle store and generated keys."""
    database_url: str | None = None
    """Any SQLAlchemy URL; ``None`` means a SQLite file ``controller.db`` in ``data_dir``."""
    database_auto_upgrade: bool = False
    """Upgrade a database at an older schema revision when the controller starts; by default the controller
    refuses to start and says to run ``edgefleet db upgrade`` (after a backup), docs/operations.md "Upgrading"."""
    broker_url: str | None = None
    """``mqtt://host:port`` of the broker; ``None`` starts the embedded broker."""
    device_broker_url: str | None = None
    """Broker URL handed to devices at enrollment, when they reach the broker under another name
    than the controller does; ``None`` means ``broker_url`` without its credentials."""
    broker_kind: BrokerKind | None = None
    """Which broker ``broker_url`` names (``mosquitto``, ``rabbitmq``, ``nats``, ``emqx``, ``hivemq``,
    ``vernemq``); what it lacks is refused at start and at enrollment instead of failing silently (NATS
    and RabbitMQ: no MQTT 5 shared subscriptions, no ``.`` in topics; docs/operations.md §3). ``None``:
    a broker with everything, such as Mosquitto."""
    embedded_broker_host: str = "127.0.0.1"
    """The embedded broker checks no credentials: anything but a loopback address is refused unless
    ``insecure_broker`` (docs/operations.md §3)."""
    embedded_broker_port: int = Field(default=0, ge=0, le=65535)
    """0: a free port chosen at the first start and kept in ``data_dir/broker.port``, so a restart keeps
    every enrolled device (their ``agent.toml`` holds the broker URL)."""
    embedded_broker_max_payload: int = Field(default=1 * MiB, ge=64 * 1024)
    insecure_broker: bool = False
    """Let the embedded broker listen on a non-loopback address although any client that reaches it
    can publish and subscribe anywhere (``edgefleet serve --insecure-broker``); a warning at start."""
    broker_admin: Literal["dynsec"] | None = None
    """``"dynsec"``: the controller manages the broker's identities through Mosquitto's dynamic-security
    plugin (a client and a role per device, its own role; docs/operations.md §3). ``None``: the
    broker's users and ACLs are the operator's (``GET /api/v1/broker/passwd``)."""
    broker_admin_url: str | None = None
    """``mqtt(s)://user:password@host:port`` of the plugin's admin client (made by ``mosquitto_ctrl
    dynsec init``); ``None`` reuses ``broker_url``, whose user then needs the admin role too."""
    broker_admin_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long one batch of dynamic-security commands may wait for the plugin's answers."""
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    """Base URL devices use to download bundles; ``None`` means ``http://listen_host:listen_port``."""
    controller_key_path: Path | None = None
    """Ed25519 key that signs orders; ``None`` means ``data_dir/keys/controller.key`` (generated)."""
    release_key_paths: list[Path] = []
    """Public keys (PEM) trusted to sign bundle manifests."""
    release_signing_key_path: Path | None = None
    """Opt-in: an Ed25519 *private* release key that lets the controller build and sign bundles
    itself (``POST .../bundles``). Whoever controls the controller can then sign releases; leave
    unset to keep release signing off the server (docs/security.md)."""
    release_signing_key_passphrase: SecretStr | None = None
    delegated_signing_key_path: Path | None = None
    """Opt-in: an Ed25519 *private* key that the current delegations document delegates (``edgefleet keys
    delegate``). Server-side builds (the retraining job) sign with it instead of a release key: bundles
    only within that delegation's name patterns, hardware classes and expiry (docs/security.md §6)."""
    delegated_signing_key_passphrase: SecretStr | None = None
    admin_token: str | None = None
    """If set, this token is stored (hashed) as an admin token at start instead of a generated one."""
    topic_prefix: str = DEFAULT_PREFIX
    shared_subscription_group: str | None = None
    lease_ttl_s: float = Field(default=10.0, ge=1.0)
    """How long a controller's hold on a background loop lasts without renewal (renewed every third of it):
    with several controllers on one PostgreSQL database, the longest a loop waits after its holder died
    (services/leases.py; SQLite serves one controller and takes no leases)."""
    mqtt_client_id: str | None = None
    """``None`` derives a stable id from the data dir, database URL and topic prefix: the same
    controller keeps its persistent session across restarts, two never take over each other's."""
    protected_tags: list[str] = ["production"]
    """A rollout to any device with one of these tags waits for approval by someone other than its creator."""
    heartbeat_timeout_s: float = Field(default=90.0, gt=0)
    ui_drift_span_s: float = Field(default=3600.0, gt=0)
    """The UI's overview counts a device's drift from its newest judged window of this span only (older
    verdicts say nothing about now); the page states the span."""
    ui_feed_span_s: float = Field(default=86400.0, gt=0)
    """How far back the overview's "Recent events" feed reaches (warnings, drift, devices gone offline)."""
    fleet_snapshot_interval_s: float = Field(default=300.0, gt=0)
    """The reconciler writes a fleet snapshot (devices per version, per tag and drift level) this often, for
    the UI's trends (services/fleet_history.py)."""
    fleet_history_retention_s: float = Field(default=8 * 86400.0, gt=0)
    """Fleet snapshots and online/offline transitions older than this are pruned (the trends reach 7 days)."""
    deployment_timeout_s: float = Field(default=1800.0, gt=0)
    order_lifetime_s: float = Field(default=3600.0, gt=0)
    download_token_lifetime_s: float = Field(default=3600.0, gt=0)
    """How long the signed download link in an order works (capped at the order's own lifetime); a
    device downloads as soon as it accepts the order and retries within a few minutes."""
    # ---- bundle downloads that scale (docs/operations.md "Downloads that scale")
    download_offload: Literal["nginx"] | None = None
    """``"nginx"``: the download endpoint checks the token (or API token) as always, then answers with an
    empty body and ``X-Accel-Redirect: <download_offload_prefix><digest>``, and nginx in front of the
    controller serves the file from ``data_dir/bundles`` (Range, HEAD). ``None``: the controller sends the bytes."""
    download_offload_prefix: str = Field(default="/_edgefleet/bundles/", pattern=r"^/([A-Za-z0-9._~-]+/)+$")
    """nginx's ``internal`` location that aliases the bundle directory (docs/nginx-edgefleet.conf)."""
    bundle_store: Literal["local", "s3"] = "local"
    """Where bundle bytes live: ``local`` (``data_dir/bundles``), or ``s3``: an S3-compatible bucket (the ``[s3]``
    extra, boto3); downloads are answered with a 307 to a short-lived presigned URL of the bucket."""
    s3_bucket: str | None = None
    s3_prefix: str = Field(default="bundles/", pattern=r"^([A-Za-z0-9._-]+/)*$")
    """Key prefix of the bundles in the bucket (``<prefix><sha256>``)."""
    s3_endpoint_url: str | None = None
    """The S3 API the controller talks to; ``None``: AWS's endpoint for ``s3_region``."""
    s3_presign_endpoint_url: str | None = None
    """The S3 endpoint named in the presigned URLs devices follow, when they reach the store under another name
    than the controller does; ``None``: ``s3_endpoint_url``. Devices need its origin in ``bundle_origins``."""
    s3_region: str = "us-east-1"
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    """``None`` (both): boto3's own credential chain (``AWS_*`` environment, shared files, instance role)."""
    s3_presign_lifetime_s: int = Field(default=300, ge=1, le=7 * 86400)
    """How long a presigned download URL works (never past the download token's own expiry); the device
    asks the controller again when it resumes later."""
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    rollout_wake_interval_s: float = Field(default=1.0, ge=0)
    """A telemetry window or status report of a device in a running rollout stage wakes the
    reconciler at once, at most this often (so a failing gate acts in well under a second); 0: only
    the interval."""
    processed_id_retention_s: float = Field(default=7 * 86400.0, gt=0)
    max_request_bytes: int = Field(default=1 * MiB, gt=0)
    """Body limit of every request except the bundle and model-file uploads."""
    auth_failure_limit: int = Field(default=20, ge=0)
    """Failed authentications (401 answers: bad API token, enrollment token, device password, UI sign-in)
    one client address may have within ``auth_failure_window_s``; past it the address gets 429 with
    ``Retry-After`` until its oldest failure leaves the window. 0: no limit."""
    auth_failure_window_s: float = Field(default=60.0, gt=0, le=86400)
    password_min_length: int = Field(default=12, ge=8, le=256)
    """Shortest password a user may be given (docs/security.md, "People and roles")."""
    password_time_cost: int = Field(default=3, ge=1, le=20)
    """argon2id iterations; with the two below, RFC 9106's second recommended setting. A stored hash
    made with other parameters is rehashed at the user's next successful sign-in."""
    password_memory_kib: int = Field(default=64 * 1024, ge=8, le=4 * 1024 * 1024)
    password_parallelism: int = Field(default=4, ge=1, le=64)
    hsts_max_age_s: int = Field(default=365 * 86400, ge=0)
    """``Strict-Transport-Security: max-age`` sent when ``public_url`` is https (0: no HSTS header)."""
    max_bundle_bytes: int = Field(default=256 * MiB, gt=0)
    max_artifact_bytes: int = Field(default=256 * MiB, gt=0)
    max_dataset_bytes: int = Field(default=64 * MiB, gt=0)
    """Bound of an uploaded sample set (``.npz``), packed and unpacked."""
    max_capture_bytes: int = Field(default=64 * MiB, gt=0)
    """Bound of one upload of samples captured on a device (``.npz``), packed and unpacked."""
    upload_grant_lifetime_s: float = Field(default=900.0, gt=0)
    """How long the signed URL of an upload grant works; a device that needs longer asks again and resumes."""
    compression_poll_interval_s: float = Field(default=5.0, gt=0)
    """How often the compression and retraining workers look for pending jobs (they are also woken on each new job)."""
    ingest_batch_max: int = Field(default=1000, gt=0)
    ingest_queue_max: int = Field(default=100_000, gt=0)
    ingest_decode_workers: int = Field(default=1, ge=0, le=32)
    delivery_acks: bool = True
    """Acknowledge every stored device message, signed, on the device's ``ack`` topic (docs/protocol.md)."""
    """Processes that decode device messages in parallel with storing (0 = in the ingest thread;
    started on the first message)."""
    device_certificates: bool = False
    """Act as a small CA for device TLS client certificates: sign the certificate request a device makes
    at enrollment (common name = device id); the CA is ``<data_dir>/ca/ca.crt`` (docs/operations.md §3)."""
    device_certificate_days: int = Field(default=365, ge=1, le=3650)
    accept_unsigned_devices: bool = False
    """Store the unsigned messages of devices enrolled before message signatures (no key registered);
    for a migration only: until their agents register a key, any client on the broker can speak for them."""
    webhook_interval_s: float = Field(default=2.0, gt=0)
    """How often the webhook sender looks for due deliveries (it is also woken when an event is stored)."""
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    """Per request to a receiver (connect, send, answer): a slow or dead receiver holds up no other."""
    webhook_max_attempts: int = Field(default=10, ge=1)
    """A delivery that got no 2xx answer after this many attempts is ``failed``."""
    webhook_retry_base_s: float = Field(default=10.0, gt=0)
    """Delay before the first retry; it doubles with every further attempt (with jitter)..."""
    webhook_retry_cap_s: float = Field(default=3600.0, gt=0)
    """...up to this."""
    incident_windows: int = Field(default=3, ge=1)
    """K: a drift incident opens when a cohort (bundle x device, bundle x tag) is at alarm for this many
    consecutive telemetry windows (docs/incidents.md)."""
    incident_min_samples: int = Field(default=100, ge=0)
    """A window counts only with at least this many samples behind its drift verdict; one with fewer is
    skipped (it neither counts nor breaks a run)."""
    incident_cooldown_s: float = Field(default=600.0, gt=0)
    """An incident closes once no alarm window of its cohort has been seen for this long."""
    incident_min_devices: int = Field(default=2, ge=1)
    """A tag cohort is at alarm when at least this many of its devices are (each in a run of K alarm
    windows to open, at alarm in their latest window to stay open)."""
    incident_tags: list[str] | None = None
    """The tags that form cohorts (``None``: every tag; ``[]``: none, device cohorts only)."""
    oidc_issuer: str | None = None
    """OpenID Connect sign-in for the web UI (docs/operations.md, "Single sign-on"): the provider's issuer URL,
    exactly as its discovery document names it (``https://...``; ``http`` only on a loopback address).
    ``None``: no OIDC sign-in."""
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    """``None``: a public client (PKCE only); else sent with HTTP Basic to the token endpoint."""
    oidc_provider_name: str = Field(default="single sign-on", min_length=1, max_length=64)
    """Shown on the login page: "Sign in with <name>"."""
    oidc_scopes: list[str] = ["openid", "profile", "email"]
    oidc_username_claim: str = Field(default="preferred_username", min_length=1, max_length=128)
    """The ID token claim that names the user (lower-cased, then a user name); ``sub`` when it is missing."""
    oidc_role_claim: str = Field(default="groups", min_length=1, max_length=128)
    """The claim (a string or a list of strings; dotted for nested, e.g. ``realm_access.roles``) whose
    values ``oidc_role_map`` maps to roles."""
    oidc_role_map: dict[str, PersonRole] = {}
    """Claim value -> role; the highest role of the user's values wins."""
    oidc_default_role: PersonRole | None = None
    """The role when no value of the claim is mapped; ``None``: such a user is refused."""
    oidc_create_users: bool = True
    """Create an unknown user at their first sign-in with the mapped role (no password)."""
    oidc_sync_role: bool = True
    """At every sign-in, set a known user's role to the mapped one (the provider decides); ``False``: the
    mapping decides only for new users, known users keep the role given in the controller."""

    @model_validator(mode="after")
    def _check_bundle_store(self) -> ControllerSettings:
        if self.bundle_store == "s3" and not self.s3_bucket:
            raise ValueError("bundle_store = 's3' needs s3_bucket: give the bucket's name (EDGEFLEET_S3_BUCKET)")
        if self.bundle_store == "s3" and self.download_offload is not None:
            raise ValueError("download_offload = 'nginx' serves the local bundle directory, but bundle_store is "
                             "'s3' (downloads already go to the bucket): remove one of them")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("give both s3_access_key_id and s3_secret_access_key, or neither (boto3's own chain)")
        return self

    @model_validator(mode="after")
    def _check_oidc(self) -> ControllerSettings:
        if self.oidc_issuer is None:
            if self.oidc_client_id or self.oidc_client_secret:
                raise ValueError("oidc_client_id/oidc_client_secret are set but oidc_issuer is not: give the "
                                 "provider's issuer URL too, or remove them")
            return self
        url = urlsplit(self.oidc_issuer)
        loopback = url.hostname in ("127.0.0.1", "::1", "localhost")
        if url.scheme != "https" and not (url.scheme == "http" and loopback) or not url.hostname:
            raise ValueError(f"oidc_issuer {self.oidc_issuer!r} is not an https URL (http only on a loopback "
                             "address): give the provider's issuer URL, e.g. https://sso.example.com/realms/fleet")
        if url.query or url.fragment:
            raise ValueError(f"oidc_issuer {self.oidc_issuer!r} has a query or fragment: an issuer URL has neither")
        if not self.oidc_client_id:
            raise ValueError("oidc_issuer is set but oidc_client_id is not: give the client id registered "
                             "at the provider for this controller")
        if "openid" not in self.oidc_scopes:
            raise ValueError(f"oidc_scopes {self.oidc_scopes} lacks 'openid': without it there is no ID token")
        if not self.oidc_role_map and self.oidc_default_role is None:
            raise ValueError("OIDC sign-in is configured but nobody could get a role: set oidc_role_map "
                             "(claim value -> role) and/or oidc_default_role")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("EDGEFLEET_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'controller.db'}"

    @property
    def resolved_mqtt_client_id(self) -> str:
        if self.mqtt_client_id:
            return self.mqtt_client_id
        identity = f"{self.data_dir.resolve()}|{self.resolved_database_url}|{self.topic_prefix}".encode()
        return f"edgefleet-controller-{hashlib.sha256(identity).hexdigest()[:12]}"

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "::", "") else self.listen_host
        return f"http://{host}:{self.listen_port}"

    @property
    def resolved_controller_key_path(self) -> Path:
        return self.controller_key_path or self.data_dir / "keys" / "controller.key"

    @property
    def bundle_dir(self) -> Path:
        return self.data_dir / "bundles"
