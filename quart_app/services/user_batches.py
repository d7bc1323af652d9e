"""Group commit for user creation.

A create as one ORM transaction runs its Python (session, pool checkout,
flush, commit) inside SQLite's single-writer section, so concurrent creates
queue behind each other's Python, while the raw INSERT and its fsync are a
small part of that time (README, "Why the code is shaped this way"). So
concurrent creates are queued and written together: one multi-row
``INSERT ... ON CONFLICT(email) DO NOTHING RETURNING``, one commit (one
fsync) per batch, run whole on the database's own thread on SQLite
(Database.run_write). Each request still gets its own answer: rows that did
not come back hit a taken email (409). Durability is unchanged: a request is
answered only after the batch it rode committed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

from quart_app.db.engine import Database
from quart_app.db.models import User, utc_now
from quart_app.errors import EmailTaken
from quart_app.services.group_commit import GroupCommit

# SQLite's statement takes the rows as parameters, not as .values(rows): a
# statement holding N rows of values is compiled again for every batch (the
# compiler was ~3 % of the event loop under load); executed with a list of
# rows it is compiled once, and SQLAlchemy still sends one multi-row INSERT
# per batch ("insertmanyvalues").
_SQLITE_INSERT_UNLESS_TAKEN = (
    sqlite_insert(User)
    .on_conflict_do_nothing(index_elements=["email"])
    .returning(User.id, User.email)
)


def _insert_unless_taken(is_sqlite: bool, rows: list[dict[str, Any]]) -> ReturningInsert[int, str]:
    """INSERT ... ON CONFLICT(email) DO NOTHING RETURNING id, email."""
    if is_sqlite:
        return _SQLITE_INSERT_UNLESS_TAKEN
    # Imported only when used: the PostgreSQL dialect and its drivers'
    # modules would take memory in every SQLite worker for nothing
    # (README, "Why the code is shaped this way").
    from sqlalchemy.dialects.postgresql import insert as postgresql_insert

    return (
        postgresql_insert(User)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(User.id, User.email)
    )


class UserBatcher(GroupCommit[tuple[str, str], User]):
    """One per serving process (state.AppState.user_batcher)."""

    name = "users"
    max_batch = 256  # 3 bound values a row: far below SQLite's 32766 limit

    def __init__(self, database: Database) -> None:
        super().__init__(database.commits)
        self._database = database

    async def create(self, name: str, email: str) -> User:
        """Insert a user with the next batch; raises EmailTaken."""
        return await self.submit((name, email))

    async def write_batch(
        self, items: list[tuple[str, str]], since: float
    ) -> list[User | Exception]:
        database = self._database
        now = utc_now()
        rows = [{"name": name, "email": email, "created_at": now} for name, email in items]
        statement = _insert_unless_taken(database.is_sqlite, rows)
        emails = [email for _, email in items]

        def insert_unless_taken(connection: Connection) -> tuple[dict[str, int], dict[str, int]]:
            result = (
                connection.execute(statement, rows)
                if database.is_sqlite
                else connection.execute(statement)
            )
            inserted = {email: user_id for user_id, email in result}
            taken = set(emails) - inserted.keys()
            existing: dict[str, int] = {}
            if taken:
                found = connection.execute(select(User.email, User.id).where(User.email.in_(taken)))
                existing = {email: user_id for email, user_id in found}
            return inserted, existing

        inserted, existing = await database.run_write(insert_unless_taken, since=since)
        winners: set[str] = set()
        results: list[User | Exception] = []
        for name, email in items:
            if email in inserted and email not in winners:
                winners.add(email)
                results.append(User(id=inserted[email], name=name, email=email, created_at=now))
            else:
                holder = existing.get(email, inserted.get(email))
                results.append(EmailTaken(f"A user with the email {email} already exists.", holder))
        return results
