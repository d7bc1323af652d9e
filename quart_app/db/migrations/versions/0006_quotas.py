"""quotas: per-user limits and the reservations of uploads in flight

``users.quota_bytes`` and ``users.quota_files`` are NULL (the configured
default) for every existing user.

Revision ID: 0006_quotas
Revises: 0005_accounts
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import quart_app.db.models

revision: str = "0006_quotas"
down_revision: str | None = "0005_accounts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table(
        "users", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.add_column(sa.Column("quota_bytes", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("quota_files", sa.BigInteger(), nullable=True))
    op.create_table(
        "quota_reservations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("expires_at", quart_app.db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_quota_reservations_owner_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_reservations")),
    )
    with op.batch_alter_table("quota_reservations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_quota_reservations_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_quota_reservations_owner_id"), ["owner_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("quota_reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quota_reservations_owner_id"))
        batch_op.drop_index(batch_op.f("ix_quota_reservations_expires_at"))
    op.drop_table("quota_reservations")
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch rebuild: on
    # SQLite a rebuild drops users, which api keys, files and uploads refer
    # to, and with foreign keys on that fails once there are any.
    op.drop_column("users", "quota_files")
    op.drop_column("users", "quota_bytes")
