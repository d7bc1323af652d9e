"""download links: signed URLs that serve a file's content without a key

Revision ID: 0007_download_links
Revises: 0006_quotas
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import quart_app.db.models

revision: str = "0007_download_links"
down_revision: str | None = "0006_quotas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "download_links",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("file_seq", sa.Integer(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", quart_app.db.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", quart_app.db.models.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", quart_app.db.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["file_seq"],
            ["files.seq"],
            name=op.f("fk_download_links_file_seq_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download_links")),
    )
    with op.batch_alter_table("download_links", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_download_links_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_download_links_file_seq"), ["file_seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("download_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_download_links_file_seq"))
        batch_op.drop_index(batch_op.f("ix_download_links_expires_at"))
    op.drop_table("download_links")
