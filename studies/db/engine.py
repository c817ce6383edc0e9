"""Engines, sessions and migrations for SQLite (one machine) and PostgreSQL (many).

SQLite: Python's sqlite3 driver begins transactions lazily, and a read transaction that later
writes must upgrade its lock, which fails at once with "database is locked" when another process
got there first. Following SQLAlchemy's recipe (docs: "Enabling Non-Legacy SQLite Transactional
Modes"), sqlite3's own transaction handling is switched off and every transaction starts with
BEGIN IMMEDIATE, so writers from several processes queue on the lock (busy_timeout) instead.
A `session_scope(..., readonly=True)` begins with a plain BEGIN: in WAL mode it never waits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")
H = TypeVar("H")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "hd_alembic_version"  # Optuna's own Alembic history lives in `alembic_version`
_MIGRATION_LOCK_KEY = 0x68646574  # pg_advisory_xact_lock key ("hdet")
# PostgreSQL SQLSTATEs worth one more try: deadlock_detected, serialization_failure.
_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
_READONLY = "hdetach_readonly"  # execution option read by the SQLite begin hook


def database_url(url: str | URL) -> URL:
    """`postgresql://` and `postgres://` mean psycopg 3 here."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def normalise_url(url: str | URL) -> str:
    """`database_url` as a string (password included), for libraries that take one, such as Optuna."""
    return database_url(url).render_as_string(hide_password=False)


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs.pop("pool_pre_ping", None)  # a file: nothing to ping
        engine = create_engine(parsed, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # pool_pre_ping costs a round trip per transaction; the queue's processes turn it off, since
    # their transactions retry on a fresh connection when the server had dropped the pooled one.
    return create_engine(parsed, **{"pool_pre_ping": True, **kwargs})


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # sqlite3 emits no BEGIN of its own; see _sqlite_on_begin
    cursor = dbapi_connection.cursor()
    try:
        for pragma in ("busy_timeout=30000", "journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # a read-only scope needs no write lock: in WAL mode its reads run beside a writer
    readonly = connection.get_execution_options().get(_READONLY, False)
    connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # Objects stay readable after the session closes: callers get plain detached rows.
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session], readonly: bool = False) -> Iterator[Session]:
    """The one place that commits, rolls back and closes. `readonly`: SQLite skips the write lock."""
    session = factory()
    try:
        if readonly:
            session.connection(execution_options={_READONLY: True})
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_transient(exc: DBAPIError) -> bool:
    """A deadlock victim, a serialisation failure, or a pooled connection the server had dropped."""
    return getattr(exc.orig, "sqlstate", None) in _TRANSIENT_SQLSTATES or exc.connection_invalidated


def retrying(attempts: int, open_scope: Callable[[], AbstractContextManager[H]], work: Callable[[H], T]) -> T:
    """`work` in a fresh scope (transaction or connection), again while the failure is transient."""
    for attempt in range(1, attempts + 1):
        try:
            with open_scope() as handle:
                return work(handle)
        except DBAPIError as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def run_core_transaction(
    factory: sessionmaker[Session], work: Callable[[Connection], T], attempts: int = 3
) -> T:
    """Like `run_transaction`, on a bare Connection: for the queue's hot paths, which run Core
    statements only and so need none of the Session's bookkeeping."""
    engine: Engine = factory.kw["bind"]
    return retrying(attempts, engine.begin, work)


_autocommit_engines: WeakKeyDictionary[Engine, Engine] = WeakKeyDictionary()


def autocommit_engine(engine: Engine) -> Engine:
    """A sibling engine whose pooled connections stay in autocommit mode (switching a pooled
    connection there and back at every checkout costs more than the statement); disposed with
    `engine`."""
    sibling = _autocommit_engines.get(engine)
    if sibling is None:
        sibling = create_engine(engine.url, isolation_level="AUTOCOMMIT")
        event.listen(engine, "engine_disposed", lambda _: sibling.dispose())
        _autocommit_engines[engine] = sibling
    return sibling


def run_autocommit(factory: sessionmaker[Session], work: Callable[[Connection], T], attempts: int = 3) -> T:
    """`work` with every statement its own transaction (PostgreSQL autocommit): no BEGIN and COMMIT
    round trips. Only for work each of whose statements leaves the database consistent alone.
    SQLite: one transaction, as `run_core_transaction` (there a round trip costs nothing)."""
    engine: Engine = factory.kw["bind"]
    if engine.dialect.name == "sqlite":
        return run_core_transaction(factory, work, attempts)
    return retrying(attempts, autocommit_engine(engine).connect, work)


def run_transaction(factory: sessionmaker[Session], work: Callable[[Session], T], attempts: int = 3) -> T:
    """`work(session)` in one transaction, run again if PostgreSQL aborts it as a deadlock victim
    or the pooled connection turns out to be dead (server restarted: the pool is then invalidated)."""
    return retrying(attempts, lambda: session_scope(factory), work)


def alembic_config(url: str | URL) -> Config:
    """Alembic's configuration, built in code: no alembic.ini is needed, installed or not."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # `%` is ConfigParser's interpolation character; escape it in passwords.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database to `revision`; idempotent, and safe to run from several processes at once.

    The whole upgrade is one transaction that first takes a lock (PostgreSQL: an advisory lock;
    SQLite: BEGIN IMMEDIATE's write lock), so a second process waits, then finds nothing to do.
    """
    from alembic import command

    config = alembic_config(url)
    engine = make_engine(url)  # its own: the SQLite connection below must not go back to a shared pool
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Batch mode rebuilds a table by dropping it, and with foreign keys on, SQLite's
                # DROP TABLE first deletes its rows, cascading to hd_jobs: an upgrade would empty
                # the queue. The pragma only takes effect outside a transaction, so before BEGIN.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                    )
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").all()):
                    raise RuntimeError(f"the upgrade left rows that break foreign keys: {broken[:5]}")
    finally:
        engine.dispose()


def head_revision() -> str:
    """The revision our migrations end at."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None, "the migrations have no head"
    return head


def require_schema(url: str | URL, engine: Engine) -> None:
    """Creating nothing, make sure the database at `url` holds our tables at head; else NoDatabase,
    saying what to run. For readers: a typo'd SQLite path must not become a new empty database."""
    from studies.exceptions import NoDatabase

    parsed = database_url(url)
    upgrade_hint = "run `hdetach db upgrade` (or submit a study) to create or migrate it"
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        # checked before connecting: sqlite3 creates a missing file, and our connect pragmas (WAL)
        # would write an empty one
        if not path.is_file() or path.stat().st_size == 0:
            raise NoDatabase(
                f"no SQLite database at {path.resolve()}: check HDETACH_DATABASE_URL, or {upgrade_hint}"
            )
    shown = parsed.render_as_string(hide_password=True)
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            raise NoDatabase(f"database {shown} holds no hdetach tables: {upgrade_hint}")
        current = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    if current != (head := head_revision()):
        raise NoDatabase(f"database {shown} is at schema revision {current}, not {head}: {upgrade_hint}")


def database_answers(engine: Engine) -> bool:
    """Whether the database answers a trivial query now (a readiness probe)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # any failure to answer is "not ready"
        return False
    return True
