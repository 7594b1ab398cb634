"""push state index by creation: the repair loop pages through unfinished pushes in order.

The repair loop reads the pushes still `accepted` (journey not ended) by (created_at, msg_id)
from where its last page ended. With the index on `state` alone, each page sorted every
unfinished push. (state, created_at, msg_id) serves that page and still serves the count of
journeys by state that /metrics makes, so it replaces ix_push_state: no index is added to an
accept. Indexes only: no row changes.

Revision ID: 5e8a1d3c9b27
Revises: 7b3e9f2a1c05
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

# Read by Alembic: where this revision sits in the chain.
revision: str = "5e8a1d3c9b27"
down_revision: str | Sequence[str] | None = "7b3e9f2a1c05"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_push_state_created", "push", ["state", "created_at", "msg_id"], unique=False
    )
    op.drop_index("ix_push_state", table_name="push")


def downgrade() -> None:
    op.create_index("ix_push_state", "push", ["state"], unique=False)
    op.drop_index("ix_push_state_created", table_name="push")
