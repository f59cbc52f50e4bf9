"""Import this module to register every table on `Base.metadata` (Alembic, tests)."""

from models import app, audit, billing, inbox, ledger, usage, user_sync  # noqa: F401
from models.base import Base

metadata = Base.metadata
