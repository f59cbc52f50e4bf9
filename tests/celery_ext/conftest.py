"""Fixtures of the celery_ext tests: the receiver's scratch-broker settings."""

from tests.receiver.conftest import receiver_settings  # noqa: F401  (a fixture, used by name)
