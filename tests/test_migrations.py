"""The schema comes only from Alembic, and the models agree with it on both databases."""
from __future__ import annotations

import pytest

from models.db import make_engine
from models.migrate import drift

pytestmark = pytest.mark.integration


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert drift(engine) == []
    finally:
        engine.dispose()


def test_upgrade_on_an_empty_database_then_again_is_a_no_op(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.migrate import upgrade
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    engine.dispose()
    assert version


def test_migrations_form_one_line_of_history() -> None:
    from alembic.script import ScriptDirectory

    from models.migrate import alembic_config
    assert len(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()) == 1


def test_downgrade_to_empty_and_up_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    from models.migrate import alembic_config, upgrade
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    upgrade(url)
    engine = make_engine(url)
    try:
        assert drift(engine) == []
    finally:
        engine.dispose()
