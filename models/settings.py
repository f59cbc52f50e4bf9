"""Typed configuration read from the environment.

Nothing here runs at import time: processes call `load_settings()` when they start, so a
missing or malformed variable fails start-up with a message that names the variable and never
echoes its value (several of them are secrets).
"""

from __future__ import annotations

import re
from functools import cache, cached_property
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ConfigError(RuntimeError):
    """A configuration variable is missing or malformed. The message names it, never its value."""


class DatabaseSettings(BaseSettings):
    """What a process that only talks to PostgreSQL needs (migrations, the CLI's read commands)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    database_url: SecretStr
    service_schema: str = "ingest"
    # A worker transaction waits at most this long for a row lock, then retries with backoff.
    db_lock_timeout_ms: int = Field(default=10_000, ge=0)
    # How often PostgreSQL checks, during a long statement, that the client is still there
    # (PostgreSQL 14+). A worker killed mid-task then releases its locks within this time instead
    # of when its statement ends. 0: not set (leave the server's default).
    db_client_check_ms: int = Field(default=2_000, ge=0)
    # DATABASE_URL names a pooler in transaction mode (PgBouncer `pool_mode = transaction`): each
    # transaction may run on a different server connection, so nothing is set per connection
    # (models.db sets the server settings per transaction and never prepares statements).
    db_transaction_pooler: bool = False

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        return SecretStr(normalize_database_url(value.get_secret_value()))

    @field_validator("service_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        if not _SCHEMA_NAME.match(value) or value == "public":
            raise ValueError("must be a lower-case SQL identifier other than 'public'")
        return value


class WebhookSecrets(BaseSettings):
    """The providers' secrets: the receiver checks deliveries with them, `send` signs with them."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    clerk_webhook_signing_secret: SecretStr | None = None
    asaas_webhook_token: SecretStr | None = None

    @cached_property
    def clerk_secrets(self) -> list[str]:
        return _split_secret(self.clerk_webhook_signing_secret)

    @cached_property
    def asaas_tokens(self) -> list[str]:
        return _split_secret(self.asaas_webhook_token)


class SupportCreditSettings(BaseSettings):
    """What `credits grant|adjust` reads besides the database."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # The most credits one support change may give or take: a typo (an extra digit, a pasted
    # id) is refused, not written. At most int4's maximum, the balance column's type.
    support_credits_max_amount: int = Field(default=100_000, gt=0, le=2_147_483_647)


class ConsoleSettings(BaseSettings):
    """What the operator's console (the Procfile's `console`) reads besides the database and Redis."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # `user:password`, comma-separated: who may open the console. Required: it never runs open.
    console_basic_auth: SecretStr
    # The users (names from CONSOLE_BASIC_AUTH) who may act: replay, prune, support credits.
    console_operators: str = ""
    # Signs the CSRF tokens of the console's forms. Unset: one made when the console starts
    # (every gunicorn worker inherits it), so a restart asks people to reload their pages.
    console_secret_key: SecretStr | None = None
    # Proxies in front of the console whose X-Forwarded-For entries are trusted: the audit log
    # then records the client's address, not the proxy's (0: the header is ignored).
    console_trusted_proxy_count: int = Field(default=0, ge=0, le=10)

    @field_validator("console_basic_auth")
    @classmethod
    def _logins(cls, value: SecretStr) -> SecretStr:
        parse_logins(value.get_secret_value())  # a ValueError names the entry, never a password
        return value

    @cached_property
    def logins(self) -> dict[str, str]:
        return parse_logins(self.console_basic_auth.get_secret_value())

    @cached_property
    def operators(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.console_operators.split(",") if name.strip())


class Settings(DatabaseSettings, WebhookSecrets):
    """Everything a service process (receiver, worker, beat) reads."""

    redis_url: SecretStr
    # Signs what the receiver hands the workers through Redis; comma-separated, newest first.
    ingest_signing_key: SecretStr | None = None
    # The services that may send usage.* and storage.* tasks: `name:key`, comma-separated,
    # several keys per name during a rotation (messaging.signing).
    usage_service_keys: SecretStr | None = None
    asaas_allowed_ips: str = ""
    trusted_proxy_count: int = Field(default=0, ge=0, le=10)
    # May a delivery wait in Redis when PostgreSQL is down? auto: read Redis's persistence settings.
    redis_durable: Literal["auto", "yes", "no"] = "auto"
    signup_credits: int = Field(default=100, ge=0)
    # How far below the plan's price an Asaas payment may be and still buy all its credits.
    payment_shortfall_tolerance_cents: int = Field(default=0, ge=0)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # The longest a webhook body may take to arrive (408 after it): a slow client holds a worker.
    body_read_timeout_seconds: float = Field(default=10.0, gt=0)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    sweep_pending_after_seconds: float = Field(default=60.0, gt=0)
    # How often beat sends the fallback store's drain (the receiver also nudges it).
    fallback_drain_interval_seconds: float = Field(default=5.0, gt=0)
    # How long an entry a drain took may stay unacknowledged before another drain reclaims it.
    fallback_claim_idle_seconds: float = Field(default=60.0, gt=0)
    # The longest a credit hold may last (`usage.hold`'s `expires_in`).
    hold_max_seconds: float = Field(default=24 * 3600.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @cached_property
    def ingest_signing_keys(self) -> list[str]:
        return _split_secret(self.ingest_signing_key)

    @cached_property
    def usage_keys(self) -> dict[str, list[str]]:
        return parse_service_keys(self.usage_service_keys.get_secret_value() if self.usage_service_keys else "")

    @field_validator("usage_service_keys")
    @classmethod
    def _service_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_service_keys(value.get_secret_value())  # a ValueError names the entry, never a key
        return value

    @cached_property
    def asaas_ip_allowlist(self) -> frozenset[str]:
        return frozenset(ip.strip() for ip in self.asaas_allowed_ips.split(",") if ip.strip())


def normalize_database_url(url: str) -> str:
    """Accept `postgres://` and `postgresql://` (as Heroku/Prisma write them); use psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError("must be a postgresql:// or postgres:// URL")


def parse_service_keys(value: str) -> dict[str, list[str]]:
    """`name:key,name:key2,other:key3` -> {"name": ["key", "key2"], "other": ["key3"]}, in order.
    Raises ValueError naming the position of an entry that is not `name:key` (never the key)."""
    keys: dict[str, list[str]] = {}
    for position, entry in enumerate((part.strip() for part in value.split(",")), start=1):
        if not entry:
            continue
        name, separator, key = entry.partition(":")
        if not separator or not name.strip() or not key.strip():
            raise ValueError(f"entry {position} is not name:key")
        keys.setdefault(name.strip(), []).append(key.strip())
    return keys


def parse_logins(value: str) -> dict[str, str]:
    """`user:password,user2:password2` -> {"user": "password", ...}. Raises ValueError naming the
    position of an entry that is not `user:password`, or a user named twice (never a password)."""
    logins: dict[str, str] = {}
    for position, entry in enumerate((part.strip() for part in value.split(",")), start=1):
        if not entry:
            continue
        user, separator, password = entry.partition(":")
        if not separator or not user.strip() or not password:
            raise ValueError(f"entry {position} is not user:password")
        if user.strip() in logins:
            raise ValueError(f"entry {position} names a user already listed")
        logins[user.strip()] = password
    if not logins:
        raise ValueError("names no user:password")
    return logins


def _split_secret(value: SecretStr | None) -> list[str]:
    if value is None:
        return []
    return [part.strip() for part in value.get_secret_value().split(",") if part.strip()]


def load_settings() -> Settings:
    """Build the settings from the process environment."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_webhook_secrets() -> WebhookSecrets:
    try:
        return WebhookSecrets()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_support_credit_settings() -> SupportCreditSettings:
    try:
        return SupportCreditSettings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_console_settings() -> ConsoleSettings:
    try:
        settings = ConsoleSettings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    unknown = sorted(settings.operators - settings.logins.keys())
    if unknown:
        raise ConfigError(f"configuration error: CONSOLE_OPERATORS names {unknown}, not users of CONSOLE_BASIC_AUTH")
    return settings


def load_database_settings() -> DatabaseSettings:
    """Only what talking to PostgreSQL needs: REDIS_URL and the webhook secrets may be unset."""
    try:
        return DatabaseSettings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


@cache
def process_settings() -> Settings:
    """This process's settings: read from the environment on first use (never at import), then
    kept. Worker code (the engine, domain rules such as the signup credits) reads them here."""
    return load_settings()


def _describe(exc: ValidationError) -> str:
    # Built from the field names and pydantic's message only: `str(exc)` would echo the input.
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]).upper() if error["loc"] else "?"
        reason = "is not set" if error["type"] == "missing" else error["msg"]
        problems.append(f"{name} {reason}")
    return "configuration error: " + "; ".join(problems)
