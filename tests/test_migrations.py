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


def test_the_bytes_of_mail_stored_before_they_had_a_table_of_their_own_move_there_and_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    from models.migrate import alembic_config
    url = f"sqlite:///{tmp_path / 'moved.db'}"
    config = alembic_config(url)
    command.upgrade(config, "cb7135e50c49")
    engine = make_engine(url)
    raw = b"Subject: [SEV-3] kept\r\n\r\n" + bytes(range(256)) * 2000
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO inbound_mail (id, received_at, door, mailbox, envelope_recipients, raw, sha256, status, "
            "auto_answer) VALUES (7, '2026-12-01 10:00:00', 'smtp', 'support@example.com', '[]', ?, 'x', 'processed', 1)",
            (raw,))
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT inbound_id, raw FROM inbound_raw").fetchall() == [(7, raw)]
    command.downgrade(config, "cb7135e50c49")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT id, raw FROM inbound_mail").fetchall() == [(7, raw)]
    engine.dispose()
