from __future__ import annotations

import pytest

from models.settings import ConfigError, load_settings

SECRET = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFr"


@pytest.fixture
def env(monkeypatch):
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "CLERK_WEBHOOK_SIGNING_SECRET",
        "ASAAS_WEBHOOK_TOKEN",
        "SIGNUP_CREDITS",
        "SERVICE_SCHEMA",
        "MAX_BODY_BYTES",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgres://u:pw@db.example:5432/app")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CLERK_WEBHOOK_SIGNING_SECRET", SECRET)
    return monkeypatch


def test_missing_database_url_is_named(env):
    env.delenv("DATABASE_URL")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "DATABASE_URL is not set" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_malformed_values_are_named_without_echoing_them(env):
    env.setenv("DATABASE_URL", "mysql://root:hunter2@db/app")
    env.setenv("SIGNUP_CREDITS", "lots")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "DATABASE_URL" in message and "SIGNUP_CREDITS" in message
    assert "hunter2" not in message and "lots" not in message and SECRET not in message


def test_postgres_urls_use_psycopg3(env):
    assert load_settings().database_url.get_secret_value() == ("postgresql+psycopg://u:pw@db.example:5432/app")
    env.setenv("DATABASE_URL", "postgresql://u@h/d")
    assert load_settings().database_url.get_secret_value() == "postgresql+psycopg://u@h/d"


def test_defaults_and_secret_lists(env):
    env.setenv("ASAAS_WEBHOOK_TOKEN", "old-token, new-token")
    settings = load_settings()
    assert settings.signup_credits == 100
    assert settings.service_schema == "ingest"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.asaas_tokens == ["old-token", "new-token"]
    assert settings.clerk_secrets == [SECRET]
    assert SECRET not in repr(settings) and SECRET not in str(settings)


def test_schema_name_must_be_a_plain_identifier(env):
    env.setenv("SERVICE_SCHEMA", 'x"; DROP TABLE "User')
    with pytest.raises(ConfigError, match="SERVICE_SCHEMA"):
        load_settings()
