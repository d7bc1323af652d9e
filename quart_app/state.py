"""One typed application state, one accessor, one ordered startup and shutdown.

Everything a serving process keeps lives on :class:`AppState`: the settings,
the database (and the commits running on it), the blob store, the paging
cursor codec, the sha256 states of resumable uploads, the group-commit
batchers and the background sweep. ``create_app`` makes one per app;
:meth:`AppState.start` builds the rest in order before the app serves and
:meth:`AppState.stop` tears it down in reverse after it stops. Code that
serves a request reaches it with :func:`app_state`; nothing else keys into
``app.extensions``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, TypeVar

from quart import Quart, current_app, g
from sqlalchemy.ext.asyncio import AsyncSession

from quart_app import metrics
from quart_app.config import Settings

if TYPE_CHECKING:
    from quart_app.db.engine import Database
    from quart_app.edge.cursors import CursorCodec
    from quart_app.services.file_batches import FileBatcher
    from quart_app.services.key_cache import KeyCache
    from quart_app.services.quotas import Quotas
    from quart_app.services.resumable_uploads import HashStates
    from quart_app.services.user_batches import UserBatcher
    from quart_app.storage import MaintainedStore

T = TypeVar("T")
EXTENSION_KEY = "quart_app"
# Seconds a quota reservation lives past the longest a body may take: the
# commit that releases it waits at most DATABASE_TIMEOUT, far less.
RESERVATION_GRACE_SECONDS = 300.0
log = logging.getLogger("quart_app.integrity")


class NotServing(RuntimeError):
    """A part of the state that exists only while the app serves was asked for."""


class AppState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._database: Database | None = None
        self._store: MaintainedStore | None = None
        self._cursor_codec: CursorCodec | None = None
        self._upload_hashes: HashStates | None = None
        self._user_batcher: UserBatcher | None = None
        self._file_batcher: FileBatcher | None = None
        self._keys: KeyCache | None = None
        self._import_workers: list[asyncio.Task[None]] = []
        self.import_wake = asyncio.Event()
        self._stop_importing = asyncio.Event()
        self._quotas: Quotas | None = None
        self.schema_revision: str | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stop_sweeping = asyncio.Event()
        self._counted = False

    # -- what exists while serving ------------------------------------------
    @property
    def database(self) -> Database:
        return _serving(self._database, "database")

    @database.setter
    def database(self, database: Database) -> None:
        self._database = database  # tests put a broken one in its place

    @property
    def store(self) -> MaintainedStore:
        return _serving(self._store, "store")

    @store.setter
    def store(self, store: MaintainedStore) -> None:
        self._store = store  # tests put a failing one in its place

    @property
    def cursor_codec(self) -> CursorCodec:
        return _serving(self._cursor_codec, "cursor codec")

    @property
    def upload_hashes(self) -> HashStates:
        return _serving(self._upload_hashes, "upload hashes")

    @property
    def user_batcher(self) -> UserBatcher:
        return _serving(self._user_batcher, "user batcher")

    @property
    def file_batcher(self) -> FileBatcher:
        return _serving(self._file_batcher, "file batcher")

    @property
    def keys(self) -> KeyCache:
        return _serving(self._keys, "key cache")

    @property
    def quotas(self) -> Quotas:
        return _serving(self._quotas, "quotas")

    # -- startup and shutdown -------------------------------------------------
    async def start(self) -> None:
        """Build what serving needs, in dependency order; each step that can
        fail names itself in the StartupError it raises."""
        from sqlalchemy.exc import DBAPIError

        from quart_app.edge.cursors import CursorCodec
        from quart_app.errors import DomainError
        from quart_app.ops.instance import load_secret_key, prepare_directories
        from quart_app.ops.integrity import TEMP_GRACE_SECONDS, recover
        from quart_app.ops.jobs import import_worker
        from quart_app.ops.opening import open_database, open_store
        from quart_app.ops.startup import describe_database, startup_step
        from quart_app.ops.sweeps import sweep_loop
        from quart_app.services.file_batches import FileBatcher
        from quart_app.services.key_cache import KeyCache
        from quart_app.services.quotas import Limits, Quotas
        from quart_app.services.resumable_uploads import HashStates
        from quart_app.services.user_batches import UserBatcher

        settings = self.settings
        self._store = await open_store(settings)
        with startup_step(f"instance directory {settings.INSTANCE_DIR}"):
            prepare_directories(settings)
            self._cursor_codec = CursorCodec(load_secret_key(settings))
        self._database, self.schema_revision = await open_database(settings)
        temp_max_age = settings.BODY_DEADLINE + TEMP_GRACE_SECONDS
        with startup_step(f"crash recovery on {describe_database(settings.database_url)}"):
            for line in await recover(self._database, self._store, temp_max_age):
                log.warning(line)
        self._upload_hashes = HashStates(settings.UPLOAD_HASH_STATES)
        self._user_batcher = UserBatcher(self._database)
        self._file_batcher = FileBatcher(self._database, self._store)
        self._keys = KeyCache(self._database, settings.KEY_CACHE_SECONDS, settings.ADMIN_KEY)
        try:
            await self._keys.start()
        except (DBAPIError, DomainError) as error:  # e.g. AUTO_MIGRATE off, no schema yet
            log.warning("the operator account is made on first use instead: %s", error)
        # A reservation outlives any request body (BODY_DEADLINE) and the
        # wait for its commit.
        self._quotas = Quotas(
            self._database,
            Limits(settings.DEFAULT_QUOTA_BYTES, settings.DEFAULT_QUOTA_FILES),
            settings.BODY_DEADLINE + RESERVATION_GRACE_SECONDS,
            limits_cache_seconds=settings.KEY_CACHE_SECONDS,
        )
        self._stop_sweeping.clear()
        self._sweeper = asyncio.ensure_future(sweep_loop(self, self._stop_sweeping))
        self.import_wake = asyncio.Event()
        self._stop_importing = asyncio.Event()
        self._import_workers = [
            asyncio.ensure_future(import_worker(self, self.import_wake, self._stop_importing))
            for _ in range(settings.IMPORT_WORKERS)
        ]
        metrics.worker_started()
        self._counted = True  # in quart_app_workers, until stop()

    async def stop(self) -> None:
        """Stop the import workers (a job in progress goes back to the
        queue) and the sweep (between sweeps, never inside one), let every
        commit and group commit in flight end, then close the database."""
        if self._counted:
            self._counted = False
            metrics.worker_stopped()
        self._stop_importing.set()
        if self._import_workers:
            await asyncio.gather(*self._import_workers, return_exceptions=True)
        self._import_workers = []
        if self._sweeper is not None:
            self._stop_sweeping.set()
            await self._sweeper
            self._sweeper = None
        if self._keys is not None:
            try:
                await self._keys.flush_used()
            except Exception:
                log.exception("could not note when keys were last used")
        database, self._database = self._database, None
        if database is not None:
            await database.commits.wait()
            await database.dispose()
        store, self._store = self._store, None
        if store is not None:
            await store.close()


def _serving(value: T | None, name: str) -> T:
    if value is None:
        raise NotServing(f"the {name} exists only while the app serves")
    return value


def init_app(app: Quart, state: AppState) -> None:
    app.extensions[EXTENSION_KEY] = state

    from quart_app.ops import lifecycle

    @app.before_serving
    async def _start() -> None:
        await state.start()
        lifecycle.log_started(state.settings, state.schema_revision)

    @app.after_serving
    async def _stop() -> None:
        began = time.monotonic()
        await state.stop()
        lifecycle.log_stopped(began)

    @app.teardown_appcontext
    async def _close_session(_: BaseException | None) -> None:
        session: AsyncSession | None = g.pop("db_session", None)
        if session is not None:
            await session.close()


def app_state(app: Quart | None = None) -> AppState:
    """The state of ``app``, or of the app serving the current request."""
    state: AppState = (app or current_app).extensions[EXTENSION_KEY]
    return state


def request_session() -> AsyncSession:
    """The request's database session, created on first use and closed when
    the request ends."""
    if "db_session" not in g:
        g.db_session = app_state().database.sessionmaker()
    session: AsyncSession = g.db_session
    return session
