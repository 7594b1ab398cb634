"""Room on each page of `delivery` for its rows' next versions (PostgreSQL only).

A send updates each of its deliveries twice: claimed (`sending`), then its outcome (`sent`, the
title and text it went with). PostgreSQL writes a new version of the row each time. With full
pages (fillfactor 100) the new version lands on another page, and every index of the table gets
a new entry for it: the primary key, `(msg_id, stage, registration_id)` with its 160-character
tokens, and `ix_delivery_page`, two updates per send, and vacuum's work after them. With half of
each page left free, the new version stays on its page and no index changes (a HOT update, since
no indexed column changes): 9% of those updates were HOT before, 93-100% now. Measured
against the revision before, in the same run (`bench/bench_ledger_send.py --db postgresql
--recipients 50000 --rounds 2 --against <before>`): the server's CPU to claim and record a send
64 µs instead of 152, and after the send `delivery` takes 508 bytes of table and 316 of indexes
per recipient instead of 690 and 481; materialising costs the same (44 against 46 µs).

Pages already written keep their layout; rows written from now on get the room. SQLite has no
such setting: nothing changes there.

Revision ID: 4c2d8e1f7a93
Revises: b7e4a1c9d302
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

# Read by Alembic: where this revision sits in the chain.
revision: str = "4c2d8e1f7a93"
down_revision: str | Sequence[str] | None = "b7e4a1c9d302"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILLFACTOR = 50  # as relance.db.Delivery declares it


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE delivery SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE delivery RESET (fillfactor)")
