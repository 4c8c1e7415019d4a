"""Alembic migrations, applied programmatically (at start and by ``spine-agent db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade_to_head(engine: Engine) -> None:
    """Bring the database schema to the newest revision."""
    command.upgrade(alembic_config(engine), "head")


def downgrade_to(engine: Engine, revision: str) -> None:
    """Undo the migrations above ``revision`` (a revision id, or ``base`` for an empty database).

    Raises:
        ValueError: ``revision`` is not one of the migrations, or lies above the current one.
    """
    script = ScriptDirectory.from_config(alembic_config(engine))
    known = [r.revision for r in script.walk_revisions()]
    if revision != "base" and revision not in known:
        raise ValueError(f"unknown revision {revision!r} (known: base, {', '.join(sorted(known))})")
    current = current_revision(engine)
    below = [r.revision for r in script.iterate_revisions(current, "base")] if current else []
    if revision != "base" and revision not in below:
        raise ValueError(f"revision {revision} is not below the ledger's revision {current}")
    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
