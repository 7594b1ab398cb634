"""Baseline: the ledger exactly as the last release without migrations made it (its
`SQLModel.metadata.create_all`). A ledger of that release is stamped with this revision by
`relance db upgrade`, not run through it; an empty database is built by it.

Revision ID: 9d5c6f1e2a4b
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Read by Alembic: where this revision sits in the chain.
revision: str = "9d5c6f1e2a4b"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "app",
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("callback_urls", sa.JSON(), nullable=False),
        sa.Column("callback_username", sa.String(length=128), nullable=True),
        sa.Column("callback_secret", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("app_key"),
    )
    op.create_table(
        "callbackbatch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("callbackbatch", schema=None) as batch_op:
        batch_op.create_index(
            "ix_callback_batch_due", ["app_key", "state", "next_attempt_at"], unique=False
        )

    op.create_table(
        "callbackrow",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("row", sa.JSON(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("url", "event_id"),
    )
    with op.batch_alter_table("callbackrow", schema=None) as batch_op:
        batch_op.create_index(
            "ix_callback_row_unbatched", ["app_key", "batch_id", "id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_callbackrow_batch_id"), ["batch_id"], unique=False)

    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("registration_id", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("alert", sa.String(length=5000), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("displayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("msg_id", "stage", "registration_id"),
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index("ix_delivery_page", ["msg_id", "stage", "id"], unique=False)

    op.create_table(
        "device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("registration_id", sa.String(length=2048), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("invalid_reason", sa.String(length=500), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_key", "registration_id"),
    )
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_alias"), ["alias"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_app_key"), ["app_key"], unique=False)

    op.create_table(
        "providerconfig",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("platforms", sa.JSON(), nullable=False),
        sa.Column("credentials", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_key", "provider"),
    )
    with op.batch_alter_table("providerconfig", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_providerconfig_app_key"), ["app_key"], unique=False)

    op.create_table(
        "push",
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("app_key", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("condition", sa.String(length=32), nullable=True),
        sa.Column("stage_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("n_delivered", sa.Integer(), nullable=False),
        sa.Column("n_displayed", sa.Integer(), nullable=False),
        sa.Column("n_clicked", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("n_stopped", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("msg_id"),
        sa.UniqueConstraint("app_key", "request_id"),
    )
    with op.batch_alter_table("push", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_push_app_key"), ["app_key"], unique=False)

    op.create_table(
        "recipient",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("registration_id", sa.String(length=2048), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("displayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("clicked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("stopped", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("msg_id", "registration_id"),
    )
    op.create_table(
        "statusevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("registration_id", sa.String(length=2048), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("statusevent", schema=None) as batch_op:
        batch_op.create_index("ix_status_event_page", ["msg_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("statusevent", schema=None) as batch_op:
        batch_op.drop_index("ix_status_event_page")

    op.drop_table("statusevent")
    op.drop_table("recipient")
    with op.batch_alter_table("push", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_push_app_key"))

    op.drop_table("push")
    with op.batch_alter_table("providerconfig", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_providerconfig_app_key"))

    op.drop_table("providerconfig")
    with op.batch_alter_table("device", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_app_key"))
        batch_op.drop_index(batch_op.f("ix_device_alias"))

    op.drop_table("device")
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_page")

    op.drop_table("delivery")
    with op.batch_alter_table("callbackrow", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_callbackrow_batch_id"))
        batch_op.drop_index("ix_callback_row_unbatched")

    op.drop_table("callbackrow")
    with op.batch_alter_table("callbackbatch", schema=None) as batch_op:
        batch_op.drop_index("ix_callback_batch_due")

    op.drop_table("callbackbatch")
    op.drop_table("app")
