"""small blobs kept in their row

Revision ID: 0005_inline_blobs
Revises: 0004_idempotency
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_inline_blobs"
down_revision: str | None = "0004_idempotency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # A blob kept in its row has no file: downgrading would lose its bytes.
    raise NotImplementedError("blobs kept in their rows cannot be moved back to files here")
