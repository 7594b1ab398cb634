"""The truth of the funnel: each delivery's A/B variant, each recipient's attributed
conversion and unsubscribe, and a device's opt-out. Nullable columns only: every row is kept
as it was (no variant, not converted, subscribed).

Revision ID: f363bfdd3682
Revises: a21a6072ade8
Create Date: 2026-11-23 21:57:22.295951
"""

from collections.abc import Sequence

import sqlalchemy as sa

# For a sqlmodel column type that env.render_item does not translate to plain SQLAlchemy.
import sqlmodel  # noqa: F401
from alembic import op

# Read by Alembic: where this revision sits in the chain.
revision: str = "f363bfdd3682"
down_revision: str | Sequence[str] | None = "a21a6072ade8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant", sa.String(length=32), nullable=True))

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unsubscribed_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("recipient", schema=None) as batch_op:
        batch_op.add_column(sa.Column("converted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("conversion_value", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("conversion_currency", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("converted_stage", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("unsubscribed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("unsubscribed_stage", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recipient", schema=None) as batch_op:
        batch_op.drop_column("unsubscribed_stage")
        batch_op.drop_column("unsubscribed_at")
        batch_op.drop_column("converted_stage")
        batch_op.drop_column("conversion_currency")
        batch_op.drop_column("conversion_value")
        batch_op.drop_column("converted_at")

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("unsubscribed_at")

    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("variant")
