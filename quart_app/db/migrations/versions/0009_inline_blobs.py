"""small blobs kept in their row

Revision ID: 0009_inline_blobs
Revises: 0008_imports
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_inline_blobs"
down_revision: str | None = "0008_imports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # A blob kept in its row has no file: downgrading would lose its bytes,
    # so it refuses while there are any (README "Upgrades and rollback").
    bind = op.get_bind()
    if bind.scalar(sa.text("SELECT 1 FROM blobs WHERE content IS NOT NULL LIMIT 1")):
        raise RuntimeError(
            "blobs are kept in their rows; `python -m quart_app migrate --to REVISION` "
            "moves them to files before it downgrades"
        )
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+): no rebuild of a table
    # that files and import jobs refer to.
    op.drop_column("blobs", "content")
