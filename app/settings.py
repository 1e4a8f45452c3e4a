"""Service configuration: one pydantic-settings class, read from environment variables once."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.keyring import Keyring, KeySettingError, parse_data_keys, parse_signing_keys

# Secrets that appeared in examples (compose.yaml of earlier versions).
_EXAMPLE_SECRETS = frozenset({"change-me-to-a-long-random-secret"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    database_url: str = Field(description="PostgreSQL DSN, e.g. postgresql://user@host:5432/db")
    redis_url: str = Field(description="Redis URL, e.g. redis://127.0.0.1:6379/0")
    redis_cluster: bool = Field(
        False, description="REDIS_URL is one node of a Redis Cluster (then without a /db)."
    )
    secret_key: str = Field(
        min_length=16,
        description="Server secret: the keys below not set are derived from it (HKDF).",
    )
    ip_hash_key: str | None = Field(
        None, min_length=16, description="Keys the IP hashes (unset: SECRET_KEY, as before)."
    )
    signing_keys: str | None = Field(
        None,
        description="Sign advocate page tokens: id:secret[,id:secret…], newest first; every "
        "one listed verifies (unset: derived from SECRET_KEY, id k0).",
    )
    data_keys: str | None = Field(
        None,
        description="Fernet keys encrypting secrets at rest, newest first; all decrypt (unset: "
        "derived from SECRET_KEY).",
    )

    @field_validator("secret_key")
    @classmethod
    def _not_an_example(cls, value: str) -> str:
        # A secret copied from an example file is no secret: refuse to start with one.
        if value in _EXAMPLE_SECRETS or "change-me" in value.lower():
            raise ValueError("SECRET_KEY is an example value: generate one (openssl rand -hex 32)")
        return value

    @field_validator("signing_keys")
    @classmethod
    def _signing_keys(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_signing_keys(value)
            except KeySettingError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("data_keys")
    @classmethod
    def _data_keys(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_data_keys(value)
            except KeySettingError as exc:
                raise ValueError(str(exc)) from None
        return value

    public_base_url: str = Field(
        "http://localhost:8000", description="Where /r/{code} links are served from."
    )

    # Hot path
    click_stream: str = "clicks"
    click_stream_shards: int = Field(
        1,
        ge=1,
        le=256,
        description="Spread clicks over this many streams by a hash of the link code, each with "
        "its own flusher consumer (for Redis Cluster: one hash slot per stream).",
    )
    conversion_stream: str = "conversions"
    click_id_param: str = Field("rcid", description="Query parameter carrying the click id.")
    cookie_name: str = "rt_ref"
    # Outgoing webhooks
    webhook_allow_private: bool = Field(
        False, description="Allow webhook URLs on loopback, link-local and private addresses."
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    webhook_retry_seconds: str = Field(
        "5,300,1800,7200,18000,36000,36000",
        pattern=r"^\s*[0-9.]+(\s*,\s*[0-9.]+)*\s*$",
        description="Waits between attempts, then the delivery is given up (about 27 h).",
    )
    webhook_disable_after_hours: float = Field(
        120.0, ge=0, description="An endpoint failing this long is disabled (5 days)."
    )
    webhook_lease_seconds: float = Field(
        60.0, gt=0, description="A claimed delivery is claimable again after this (a dead worker)."
    )
    webhook_concurrency: int = Field(16, ge=1, le=256)
    event_retention_days: int = Field(30, ge=1, le=3650, description="The event feed keeps this.")
    click_retention_days: int = Field(
        180,
        ge=31,
        le=3650,
        description="Clicks older than this lose user agent, referer and IP data (per monthly "
        "partition, by the scheduler).",
    )
    cookie_secure: bool = True
    trust_forwarded_for: bool = Field(
        False, description="Take the client IP from X-Forwarded-For (only behind a trusted proxy)."
    )
    link_cache_ttl_seconds: float = 60.0
    link_cache_negative_ttl_seconds: float = 5.0
    click_batch_max: int = Field(512, description="Most clicks coalesced into one Redis write.")
    click_writers: int = Field(
        2, ge=1, le=16, description="Redis writes of clicks in flight at once."
    )
    redis_write_timeout_seconds: float = Field(
        0.5, description="After this a click write counts as failed and is spooled to disk."
    )
    spool_dir: Path = Field(
        Path(".data/spool"), description="Where clicks wait while Redis is down."
    )
    spool_replay_interval_seconds: float = 1.0

    # Flusher
    flush_batch_size: int = Field(10_000, description="Most events written per PostgreSQL batch.")
    flush_max_wait_ms: int = Field(200, description="Longest wait for a batch to fill.")
    flush_claim_idle_ms: int = Field(
        30_000,
        description="Pending entries idle this long belong to a dead flusher and are claimed.",
    )
    conversion_workers: int = Field(
        1, ge=1, le=64,
        description="Conversions a flusher processes at once (one PostgreSQL connection each).",
    )  # fmt: skip
    flusher_group: str = "flushers"
    flusher_metrics_port: int = 9101

    # PostgreSQL pool
    # 0: the API starts (and redirects from cache) even while PostgreSQL is down.
    db_pool_min: int = 0
    db_pool_max: int = 10

    # Limits at the edge (see app/ratelimits.py): "<n>/<second|minute|hour>", as `limits` reads.
    max_body_bytes: int = Field(
        65_536, ge=1024, description="Largest request body; larger ones are 413 before reading."
    )
    max_upload_bytes: int = Field(
        10_485_760,
        ge=1024,
        description="Largest upload (a reconciliation's orders), read only "
        "once its API key is known.",
    )
    ops_token: str | None = Field(
        None, min_length=16, description="When set, /metrics and the API docs need "
        "`Authorization: Bearer <token>`, and /readyz shows its details only with it.",
    )  # fmt: skip
    rate_limit_api_key: str = "1200/minute"
    rate_limit_postbacks: str = Field("60000/minute", description="Per merchant.")
    rate_limit_pixels_per_merchant: str = "30000/minute"
    rate_limit_pixels_per_ip: str = "60/minute"
    rate_limit_auth_failures_per_ip: str = Field(
        "30/minute", description="Unknown keys, bad signatures and unknown merchants, per IP."
    )

    log_level: str = "INFO"

    @cached_property
    def keyring(self) -> Keyring:
        return Keyring.build(self.secret_key, self.ip_hash_key, self.signing_keys, self.data_keys)

    @cached_property
    def click_streams(self) -> list[str]:
        """The click stream, or its shards `clicks:{0}` … (braces: a Redis Cluster hash tag)."""
        if self.click_stream_shards == 1:
            return [self.click_stream]
        return [f"{self.click_stream}:{{{i}}}" for i in range(self.click_stream_shards)]

    @cached_property
    def event_streams(self) -> list[str]:
        return [*self.click_streams, self.conversion_stream]


def load_settings() -> Settings:
    return Settings()  # values come from the environment
