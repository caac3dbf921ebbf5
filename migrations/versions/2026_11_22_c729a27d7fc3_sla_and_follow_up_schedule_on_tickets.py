"""SLA and follow-up schedule on tickets: notify list, warning/breach marks, next follow-up, SEV-1 reminder

Revision ID: c729a27d7fc3
Revises: 2fba74715562
Create Date: 2026-11-22 01:46:53.673638
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = 'c729a27d7fc3'
down_revision = '2fba74715562'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('notify', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(sa.Column('sla_warn_at', models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sla_warned_at', models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sla_breached_at', models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('next_followup_at', models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('followup_attempts', sa.Integer(), nullable=False, server_default=sa.text('0')))
        batch_op.add_column(sa.Column('next_sev1_reminder_at', models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_tickets_next_followup_at'), ['next_followup_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_next_sev1_reminder_at'), ['next_sev1_reminder_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_tickets_sla_warn_at'), ['sla_warn_at'], unique=False)
    # Cases that exist already are looked at by the first sweep, which works out their real times.
    op.execute("UPDATE tickets SET sla_warn_at = created_at "
               "WHERE status = 'open' AND first_response_at IS NULL AND first_response_due IS NOT NULL")
    op.execute("UPDATE tickets SET next_followup_at = updated_at WHERE status = 'pending'")


def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tickets_sla_warn_at'))
        batch_op.drop_index(batch_op.f('ix_tickets_next_sev1_reminder_at'))
        batch_op.drop_index(batch_op.f('ix_tickets_next_followup_at'))
        batch_op.drop_column('next_sev1_reminder_at')
        batch_op.drop_column('followup_attempts')
        batch_op.drop_column('next_followup_at')
        batch_op.drop_column('sla_breached_at')
        batch_op.drop_column('sla_warned_at')
        batch_op.drop_column('sla_warn_at')
        batch_op.drop_column('notify')
