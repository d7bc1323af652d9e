"""Starting fails loudly: one line on stderr naming the cause, and a non-zero
exit status, never a traceback and a clean exit.

:class:`StartupError` is a ``SystemExit`` whose code is that line. Quart's
startup and Hypercorn's lifespan catch ``Exception`` (logging a traceback, or
carrying on "without lifespan support"); a ``SystemExit`` passes through them
untouched, and the interpreter, or the worker process multiprocessing
started, prints its line and exits with status 1. Startup steps turn their
expected failures (a path that cannot be used, a database that cannot be
opened, a driver that is not installed) into one with :func:`startup_step`;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from quart_app.errors import DomainError
from quart_app.storage import StorageFull, StorageUnwritable

PREFIX = "quart_app: cannot start: "


def _retrieve(task: asyncio.Task[object]) -> None:
    if not task.cancelled():
        task.exception()


class StartupError(SystemExit):
    """The server cannot start; ``cause`` says why, in one line."""

    def __init__(self, cause: str) -> None:
        super().__init__(PREFIX + cause)
        self.cause = cause
        # Raised in a task, a SystemExit leaves the event loop at once and the
        # task is never awaited: asyncio would print it again, traceback and
        # all, as "Task exception was never retrieved".
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no event loop running
            task = None
        if task is not None:
            task.add_done_callback(_retrieve)


def describe_database(url: str) -> str:
    """The URL as it may be logged: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(an invalid URL)"


def _cause(error: BaseException, what: str) -> str:
    if isinstance(error, OSError):
        # The path, unless the step's name already ends with it.
        path = "" if not error.filename or what.endswith(str(error.filename)) else error.filename
        if isinstance(error, FileExistsError):
            return f"{path or 'it'} exists and is not a directory"
        if isinstance(error, NotADirectoryError):
            return f"{path}{': ' if path else ''}a part of the path is not a directory"
        return f"{path}{': ' if path else ''}{error.strerror or error}"
    if isinstance(error, DBAPIError):
        return str(error.orig).splitlines()[0]
    if isinstance(error, DomainError):
        return error.detail
    if isinstance(error, ImportError):
        return f"{error} (is its driver installed?)"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@contextmanager
def startup_step(what: str) -> Iterator[None]:
    """Expected failures inside become a StartupError "<what>: <cause>"."""
    try:
        yield
    except (
        OSError,
        DBAPIError,
        ImportError,
        DomainError,
        StorageFull,
        StorageUnwritable,
    ) as error:
        raise StartupError(f"{what}: {_cause(error, what)}") from None
