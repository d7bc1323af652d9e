"""Keyset paging: rows whose key is above the last one shown."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from quart_app.db.models import Base

M = TypeVar("M", bound=Base)


async def keyset_page(
    session: AsyncSession,
    model: type[M],
    key: InstrumentedAttribute[Any],
    after: int,
    limit: int,
    where: ColumnElement[bool] | None = None,
) -> tuple[list[M], bool]:
    """Up to ``limit`` rows with ``key > after`` (and ``where``) in key
    order, and whether more remain."""
    query = select(model).where(key > after, true() if where is None else where)
    rows = list(await session.scalars(query.order_by(key).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
