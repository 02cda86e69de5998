"""Database engine, sessions, and migrations run at start-up (Alembic)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from ..errors import DatabaseUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
MIGRATIONS = Path(__file__).parent / "migrations"
ASYNC_POOL_SIZE = 16  # connections per instance: so many units of work run side by side, the rest wait their turn


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while the handler writes; foreign keys make deletes cascade.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """The one door to the database: an engine, sessions, and `run` for a unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        # SQLite runs in this process: its calls take microseconds, so they run on the event loop. In a thread
        # they were slower, not faster: sqlite3 gives up the GIL at every row and waits up to the switch
        # interval (5 ms) to get it back while the loop is busy, which made a 100-row page take ~400 ms
        # under load. One thread also means one writer, so SQLite never waits on its own locks.
        self.inline = url.startswith("sqlite")
        kwargs: dict[str, Any] = {} if self.inline else {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
            path = url.split("sqlite:///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # A server database is reached from the event loop through the driver's async mode, the same session
        # functions running in SQLAlchemy's greenlet bridge: no worker thread per call. In threads, every call
        # paid thread hand-offs and fought the loop for the GIL; 32 API reads in flight queued behind the
        # executor's 6 threads (measured: ~280 reads/s of one integration, against ~2,000 of /healthz).
        self._async_engine: AsyncEngine | None = None
        self._async_sessions: tuple[async_sessionmaker[AsyncSession], async_sessionmaker[AsyncSession]] | None = None

    def migrate(self) -> None:
        """Bring the schema to the newest migration; DatabaseUnavailable if the database does not answer."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection_url"] = self.url
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except OperationalError as err:
            original = str(err.orig).splitlines()[0] if err.orig else str(err)
            raise DatabaseUnavailable(f"the database cannot be used: {original}") from err
        log.info("database schema is current (%s)", self.engine.url.render_as_string(hide_password=True))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    async def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `function(session, ...)` as one unit of work: committed if it returns, rolled back if it raises."""
        if self.inline:
            return self.run_now(function, *args, **kwargs)
        sessions, _ = self._async()
        try:
            async with sessions() as session, session.begin():
                return await session.run_sync(lambda sync_session: function(sync_session, *args, **kwargs))
        except OperationalError as err:  # down, locked or full: not the caller's mistake, and it passes
            raise _unavailable(err) from err

    async def read(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`run` for a function that only reads: each statement sees what is committed when it runs.

        On a server database it runs outside a transaction (no BEGIN and COMMIT round trips): the API's reads.
        """
        if self.inline:
            return self.run_now(function, *args, **kwargs)
        _, reads = self._async()
        try:
            async with reads() as session:
                return await session.run_sync(lambda sync_session: function(sync_session, *args, **kwargs))
        except OperationalError as err:
            raise _unavailable(err) from err

    def _async(self) -> tuple[async_sessionmaker[AsyncSession], async_sessionmaker[AsyncSession]]:
        """Sessions on the async engine, made at first use (inside the event loop): for units of work, for reads."""
        if self._async_engine is None:
            # No overflow: a burst waits for a pooled connection instead of opening one to close it right after (a
            # server process forked and ended per request: that churn, not the queries, made the slowest reads).
            self._async_engine = create_async_engine(
                self.url, pool_pre_ping=True, pool_size=ASYNC_POOL_SIZE, max_overflow=0
            )
            autocommit = self._async_engine.execution_options(isolation_level="AUTOCOMMIT")
            self._async_sessions = (
                async_sessionmaker(self._async_engine, expire_on_commit=False),
                async_sessionmaker(autocommit, expire_on_commit=False),
            )
        assert self._async_sessions is not None
        return self._async_sessions

    async def close(self) -> None:
        """Close every connection."""
        if self._async_engine is not None:
            await self._async_engine.dispose()
        self.engine.dispose()

    def run_now(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`run`, blocking the caller (at start-up, before the event loop serves anything)."""
        try:
            with self.session() as session:
                return function(session, *args, **kwargs)
        except OperationalError as err:  # down, locked or full: not the caller's mistake, and it passes
            raise _unavailable(err) from err


def _unavailable(err: OperationalError) -> DatabaseUnavailable:
    original = str(err.orig).splitlines()[0] if err.orig else str(err)
    return DatabaseUnavailable(f"the database cannot be used right now: {original}")


RETRY_DELAY_MAX_SECONDS = 10.0


async def retry_until_stored(store: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Call `store` until the database takes it: a broker message handled this way stays unacknowledged meanwhile."""
    delay = 0.5
    while True:
        try:
            return await store()
        except DatabaseUnavailable as err:
            log.warning("%s: %s; trying again in %.1f s", what, err.detail, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_DELAY_MAX_SECONDS)
