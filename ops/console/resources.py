"""What one console process holds (one per gunicorn worker, made after the fork)."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.settings import ConsoleSettings, Settings

EXTENSION = "pedro_console"


@dataclass(frozen=True)
class Resources:
    settings: Settings
    console: ConsoleSettings
    engine: Engine
    sessions: sessionmaker[Session]
    producer: Celery  # sends replays by task name; never runs a task itself
    max_support_amount: int  # SUPPORT_CREDITS_MAX_AMOUNT, as `credits grant|adjust` reads it

    def close(self) -> None:
        self.producer.close()
        self.engine.dispose()


def resources() -> Resources:
    found: Resources = current_app.extensions[EXTENSION]
    return found
