"""import jobs

Revision ID: 0008_imports
Revises: 0007_download_links
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import quart_app.db.models

revision: str = "0008_imports"
down_revision: str | None = "0007_download_links"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_jobs",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("archive_format", sa.String(length=16), nullable=False),
        sa.Column("archive_size", sa.BigInteger(), nullable=False),
        sa.Column("archive_sha256", sa.String(length=64), nullable=True),
        sa.Column("fence", sa.Integer(), nullable=False),
        sa.Column("lease_until", quart_app.db.models.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("entries_done", sa.Integer(), nullable=False),
        sa.Column("entries_total", sa.Integer(), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.String(length=128), nullable=True),
        sa.Column("problem", sa.Text(), nullable=True),
        sa.Column("created_at", quart_app.db.models.UTCDateTime(), nullable=False),
        sa.Column("started_at", quart_app.db.models.UTCDateTime(), nullable=True),
        sa.Column("finished_at", quart_app.db.models.UTCDateTime(), nullable=True),
        sa.Column("expires_at", quart_app.db.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["archive_sha256"], ["blobs.sha256"], name=op.f("fk_import_jobs_archive_sha256_blobs")
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_import_jobs_batch_id_batches")
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_import_jobs_owner_id_users")
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_import_jobs")),
        sa.UniqueConstraint("id", name=op.f("uq_import_jobs_id")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("import_jobs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_import_jobs_archive_sha256"), ["archive_sha256"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_import_jobs_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_import_jobs_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_import_jobs_status"), ["status"], unique=False)


def downgrade() -> None:
    op.drop_table("import_jobs")
