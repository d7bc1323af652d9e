"""a lease on each resumable upload

Revision ID: 0010_upload_leases
Revises: 0009_inline_blobs
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import quart_app.db.models

revision: str = "0010_upload_leases"
down_revision: str | None = "0009_inline_blobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE ... ADD COLUMN on both databases (no table rebuild
    # on SQLite). The token starts at 0 for uploads already there; the
    # first PATCH's lease makes it 1.
    op.add_column("uploads", sa.Column("lease_owner", sa.String(length=255), nullable=True))
    op.add_column(
        "uploads",
        sa.Column("lease_token", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "uploads",
        sa.Column("lease_expires_at", quart_app.db.models.UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+). A PATCH running on the
    # old code then holds the partial's flock (disk) or lock object (S3).
    op.drop_column("uploads", "lease_expires_at")
    op.drop_column("uploads", "lease_token")
    op.drop_column("uploads", "lease_owner")
