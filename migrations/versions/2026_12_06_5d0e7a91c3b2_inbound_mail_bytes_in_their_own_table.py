"""Inbound mail bytes in a table of their own

On SQLite an UPDATE rewrites the whole row: processing updates every inbound mail, and with the
bytes beside its status they were read and written whole again each time (for a 26 MB mail, 52 MB
more memory and 26 MB more written). `inbound_raw` holds them, one row per inbound mail, keyed by
its id; the bytes of the mails already stored move there.

Revision ID: 5d0e7a91c3b2
Revises: cb7135e50c49
Create Date: 2026-12-06 02:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '5d0e7a91c3b2'
down_revision = 'cb7135e50c49'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'inbound_raw',
        sa.Column('inbound_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['inbound_id'], ['inbound_mail.id'], name=op.f('fk_inbound_raw_inbound_id_inbound_mail')),
        sa.PrimaryKeyConstraint('inbound_id', name=op.f('pk_inbound_raw')),
    )
    op.execute("INSERT INTO inbound_raw (inbound_id, raw) SELECT id, raw FROM inbound_mail")
    # ALTER TABLE itself on both databases (SQLite 3.35+): a batch copy of the table would drop the
    # old one, which the foreign keys pointing at it forbid while they are enforced.
    op.execute("ALTER TABLE inbound_mail DROP COLUMN raw")


def downgrade() -> None:
    op.add_column('inbound_mail', sa.Column('raw', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE inbound_mail SET raw = (SELECT raw FROM inbound_raw WHERE inbound_raw.inbound_id = inbound_mail.id)")
    if op.get_bind().dialect.name != "sqlite":  # SQLite would need the table copy above: the column stays nullable
        op.alter_column('inbound_mail', 'raw', existing_type=sa.LargeBinary(), nullable=False)
    op.drop_table('inbound_raw')
