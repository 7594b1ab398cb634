"""Secrets at rest: `app.callback_secret` becomes text wide enough for a sealed secret, and
every callback secret and provider credential is sealed under the newest key of
RELANCE_SECRET_KEYS (relance/sealing.py).

Without RELANCE_SECRET_KEYS the upgrade still runs (a deployment is not stopped by a new
setting), and the secrets stay in clear, marked as such: `relance db upgrade` says so, and
`relance secrets rotate` seals them once a key is set (README "Keys and rotation").

Revision ID: b7e4a1c9d302
Revises: 03c6062b4f0f
Create Date: 2026-11-23
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from relance import sealing

# Read by Alembic: where this revision sits in the chain.
revision: str = "b7e4a1c9d302"
down_revision: str | Sequence[str] | None = "03c6062b4f0f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("relance.migrate")


def upgrade() -> None:
    with op.batch_alter_table("app", schema=None) as batch_op:
        batch_op.alter_column(
            "callback_secret",
            existing_type=sa.String(length=128),
            type_=sa.Text(),
            existing_nullable=True,
        )
    keyring = sealing.current()
    before = sealing.seal_all(op.get_bind(), keyring)
    if keyring is None and before.clear:
        log.warning(
            "%d secret(s) left in clear: set %s and run `relance secrets rotate`",
            before.clear,
            sealing.SETTING,
        )


def downgrade() -> None:
    # Secrets go back to clear (a release before this one reads them so); that needs the keys.
    bind = op.get_bind()
    keyring = sealing.current()
    sealing.check_keys(bind, keyring)
    apps = sa.table("app", sa.column("app_key", sa.String), sa.column("callback_secret", sa.Text))
    providers = sa.table(
        "providerconfig", sa.column("id", sa.Integer), sa.column("credentials", sa.JSON)
    )
    for app_key, stored in list(bind.execute(sa.select(apps.c.app_key, apps.c.callback_secret))):
        if stored is not None:
            clear = sealing.open_text(stored, keyring)
            bind.execute(
                apps.update().where(apps.c.app_key == app_key).values(callback_secret=clear)
            )
    for id_, stored in list(bind.execute(sa.select(providers.c.id, providers.c.credentials))):
        clear_json = sealing.open_json(stored, keyring)
        bind.execute(providers.update().where(providers.c.id == id_).values(credentials=clear_json))
    with op.batch_alter_table("app", schema=None) as batch_op:
        batch_op.alter_column(
            "callback_secret",
            existing_type=sa.Text(),
            type_=sa.String(length=128),
            existing_nullable=True,
        )
