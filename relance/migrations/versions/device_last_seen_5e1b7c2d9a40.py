"""`device.last_seen_at`: when a device last reported a status of its own, what
`POST /v4/devices/status` answers; filled from the status events the ledger already holds.

Revision ID: 5e1b7c2d9a40
Revises: 0887f640e0ea
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Read by Alembic: where this revision sits in the chain.
revision: str = "5e1b7c2d9a40"
down_revision: str | Sequence[str] | None = "0887f640e0ea"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One grouped pass over the events (not one per device): the latest delivered, displayed or
# clicked of each (app, registration id). UPDATE ... FROM is in PostgreSQL and SQLite >= 3.33.
BACKFILL = """
    UPDATE device SET last_seen_at = seen.at
    FROM (
        SELECT p.app_key AS app_key, e.registration_id AS registration_id, max(e.at) AS at
        FROM statusevent AS e JOIN push AS p ON p.msg_id = e.msg_id
        WHERE e.status IN ('delivered', 'displayed', 'clicked')
        GROUP BY p.app_key, e.registration_id
    ) AS seen
    WHERE device.app_key = seen.app_key AND device.registration_id = seen.registration_id
"""


def upgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(sa.text(BACKFILL))


def downgrade() -> None:
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_column("last_seen_at")
