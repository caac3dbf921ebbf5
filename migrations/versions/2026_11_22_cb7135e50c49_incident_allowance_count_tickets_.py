"""Incident allowance count: tickets indexed by organization and creation time

The per-organization count of this contract year's cases (intake/pipeline.py `_incidents_used`)
read every case the organization ever had through `ix_tickets_organization`; with created_at in
the index it reads only this year's index entries. The composite index also serves any lookup
by organization alone, so it replaces the single-column one.

Revision ID: cb7135e50c49
Revises: c729a27d7fc3
Create Date: 2026-11-22 04:24:59.583434
"""
from __future__ import annotations

from alembic import op

revision = 'cb7135e50c49'
down_revision = 'c729a27d7fc3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tickets_organization'))
        batch_op.create_index('ix_tickets_organization_created_at', ['organization', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index('ix_tickets_organization_created_at')
        batch_op.create_index(batch_op.f('ix_tickets_organization'), ['organization'], unique=False)
