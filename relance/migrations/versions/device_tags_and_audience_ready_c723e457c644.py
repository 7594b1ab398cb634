"""Device tags in a table of their own, backfilled from each device's JSON tags, so `to.tag`
reads an index instead of every device of the app; `to.alias` gets an (app_key, alias) index;
`push.audience_ready` says whether a push's recipients are all in the ledger (existing pushes
were materialised when accepted, hence the default TRUE).

Revision ID: c723e457c644
Revises: 9d5c6f1e2a4b
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Read by Alembic: where this revision sits in the chain.
revision: str = "c723e457c644"
down_revision: str | Sequence[str] | None = "9d5c6f1e2a4b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One row per distinct (device, tag) of the JSON lists, however the database spells JSON.
BACKFILL = {
    "sqlite": """
        INSERT INTO devicetag (app_key, tag, device_id)
        SELECT DISTINCT d.app_key, j.value, d.id
        FROM device AS d, json_each(d.tags) AS j
        WHERE json_valid(d.tags) AND json_type(d.tags) = 'array' AND j.type = 'text'
    """,
    "postgresql": """
        INSERT INTO devicetag (app_key, tag, device_id)
        SELECT DISTINCT d.app_key, t.tag, d.id
        FROM device AS d CROSS JOIN LATERAL json_array_elements_text(d.tags) AS t(tag)
        WHERE json_typeof(d.tags) = 'array'
    """,
}


def upgrade() -> None:
    op.create_table(
        "devicetag",
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("app_key", "tag", "device_id"),
    )
    with op.batch_alter_table("devicetag", schema=None) as batch_op:
        batch_op.create_index("ix_devicetag_device", ["device_id"], unique=False)
    op.execute(sa.text(BACKFILL[op.get_bind().dialect.name]))

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_alias"))
        batch_op.create_index("ix_device_app_alias", ["app_key", "alias"], unique=False)

    with op.batch_alter_table("push", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("audience_ready", sa.Boolean(), server_default=sa.true(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("push", schema=None) as batch_op:
        batch_op.drop_column("audience_ready")

    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index("ix_device_app_alias")
        batch_op.create_index(batch_op.f("ix_device_alias"), ["alias"], unique=False)

    with op.batch_alter_table("devicetag", schema=None) as batch_op:
        batch_op.drop_index("ix_devicetag_device")

    op.drop_table("devicetag")
