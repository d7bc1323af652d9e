"""accounts: API keys, and an owner for every file, batch, upload and
Idempotency-Key record

Rows made before accounts existed get the operator account (user 0,
``operator@quart-app.invalid``, README "Accounts"), created here when there
are such rows.

Revision ID: 0005_accounts
Revises: 0004_idempotency
Create Date: 2026-12-01
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import quart_app.db.models

revision: str = "0005_accounts"
down_revision: str | None = "0004_idempotency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Also in services/accounts.py (migrations never import the code they migrate
# from, which changes after them).
OPERATOR_EMAIL = "operator@quart-app.invalid"
OPERATOR_NAME = "Operator"
OWNED = ("files", "batches", "uploads")


def _operator_id() -> int | None:
    """The operator account's id, created if rows need an owner."""
    bind = op.get_bind()
    tables = (*OWNED, "idempotency_records")
    if not any(bind.scalar(sa.text(f"SELECT 1 FROM {name} LIMIT 1")) for name in tables):
        return None
    found = bind.scalar(sa.text("SELECT id FROM users WHERE email = :e"), {"e": OPERATOR_EMAIL})
    if found is not None:
        return int(found)
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    bind.execute(
        sa.text("INSERT INTO users (id, name, email, created_at) VALUES (0, :n, :e, :t)"),
        {"n": OPERATOR_NAME, "e": OPERATOR_EMAIL, "t": now},
    )
    return 0


@contextmanager
def _files_set_aside() -> Iterator[None]:
    """SQLite alters a table by rebuilding it (copy, drop, rename). Dropping
    batches while files refer to it counts, with foreign keys on, as
    deleting parent rows, and the transaction could not commit; PRAGMA
    foreign_keys cannot be turned off inside it. So the rows of files are
    held aside while batches is rebuilt, then put back."""
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    op.execute("CREATE TEMP TABLE _files_held AS SELECT * FROM files")
    op.execute("DELETE FROM files")
    yield
    op.execute("INSERT INTO files SELECT * FROM _files_held")
    op.execute("DROP TABLE _files_held")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.String(length=64), nullable=False),
        sa.Column("created_at", quart_app.db.models.UTCDateTime(), nullable=False),
        sa.Column("last_used_at", quart_app.db.models.UTCDateTime(), nullable=True),
        sa.Column("expires_at", quart_app.db.models.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", quart_app.db.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_keys_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_keys_secret_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_user_id"), ["user_id"], unique=False)

    operator = _operator_id()
    for table in OWNED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
        if operator is not None:
            op.execute(sa.text(f"UPDATE {table} SET owner_id = {operator}"))
    if operator is not None:
        op.execute(sa.text("UPDATE idempotency_records SET owner = :o").bindparams(o=str(operator)))
    with _files_set_aside(), op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_batches_owner_id_users"), "users", ["owner_id"], ["id"]
        )
        batch_op.create_index(batch_op.f("ix_batches_owner_id"), ["owner_id"], unique=False)
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_uploads_owner_id_users"), "users", ["owner_id"], ["id"]
        )
        batch_op.create_index(batch_op.f("ix_uploads_owner_id"), ["owner_id"], unique=False)
    with op.batch_alter_table(
        "files", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.alter_column("owner_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_files_owner_id_users"), "users", ["owner_id"], ["id"]
        )
        batch_op.drop_constraint("uq_files_id", type_="unique")
        batch_op.create_unique_constraint("uq_files_owner_id_id", ["owner_id", "id"])
        batch_op.create_index(batch_op.f("ix_files_id"), ["id"], unique=False)


def downgrade() -> None:
    # Two owners may have files with the same id; the single-owner schema
    # cannot hold both, so the downgrade refuses rather than drop one.
    bind = op.get_bind()
    if bind.scalar(sa.text("SELECT 1 FROM files GROUP BY id HAVING COUNT(*) > 1 LIMIT 1")):
        raise RuntimeError("files of different owners share ids; cannot downgrade")
    with op.batch_alter_table(
        "files", schema=None, table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        batch_op.drop_index(batch_op.f("ix_files_id"))
        batch_op.drop_constraint("uq_files_owner_id_id", type_="unique")
        batch_op.create_unique_constraint("uq_files_id", ["id"])
        batch_op.drop_constraint(batch_op.f("fk_files_owner_id_users"), type_="foreignkey")
        batch_op.drop_column("owner_id")
    for table in ("uploads", "batches"):
        held = _files_set_aside() if table == "batches" else nullcontext()
        with held, op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_owner_id"))
            batch_op.drop_constraint(batch_op.f(f"fk_{table}_owner_id_users"), type_="foreignkey")
            batch_op.drop_column("owner_id")
    # Without owners, one record per key: a key two owners used would
    # replay one's answer to the other, so neither record is kept (a retry
    # with it runs again).
    op.execute(
        sa.text(
            "DELETE FROM idempotency_records WHERE key IN (SELECT key FROM "
            "idempotency_records GROUP BY key HAVING COUNT(*) > 1)"
        )
    )
    op.execute(sa.text("UPDATE idempotency_records SET owner = 'anonymous'"))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_user_id"))
    op.drop_table("api_keys")
