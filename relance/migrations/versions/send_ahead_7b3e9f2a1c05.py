"""send_ahead: small pushes whose stage 0 a worker sends before their journey starts.

A new table only: nothing existing changes, so an older ledger upgrades without touching a
row. Empty until RELANCE_SEND_AHEAD is on.

Revision ID: 7b3e9f2a1c05
Revises: 4c2d8e1f7a93
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Read by Alembic: where this revision sits in the chain.
revision: str = "7b3e9f2a1c05"
down_revision: str | Sequence[str] | None = "4c2d8e1f7a93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "send_ahead",
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("msg_id"),
    )
    op.create_index("ix_send_ahead_due_at", "send_ahead", ["due_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_send_ahead_due_at", table_name="send_ahead")
    op.drop_table("send_ahead")
