"""Durable job store on SQLAlchemy 2 (async): SQLite for one machine, PostgreSQL for several.

Every state change is one conditional UPDATE (compare-and-set on the row's state), so two
workers — or two tasks of one worker — can never both move the same job. The schema is owned by
the Alembic migrations in `bot/migrations/`; `jobs` below must always equal their head (a test
compares them). Rows leave this module only as frozen `bot.jobs.Job` values.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    create_async_engine,
)

from bot.config import mask_url_password
from bot.jobs import ACTIVE_STATES, Job, JobState, NewJob, Outcome

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Long enough to ride out another worker's write transaction (each is a single statement).
SQLITE_BUSY_TIMEOUT_MS = 10_000

# Execution option read by the SQLite "begin" hook: write transactions take the write lock up
# front, so they wait in busy_timeout instead of failing half-way with SQLITE_BUSY.
_SQLITE_IMMEDIATE = "animate_sqlite_begin_immediate"

# Any constant works; it only has to be the same in every process sharing the database.
_PG_MIGRATION_LOCK = 0x616E696D61746531  # "animate1"

DEFAULT_POOL_SIZE = 10
"""PostgreSQL connections each process keeps open (DATABASE_POOL_SIZE)."""

PING_AFTER_IDLE_SECONDS = 2.0
"""A pooled PostgreSQL connection unused for this long is pinged before it is handed out."""
_LAST_USED = "animate_last_used"

E = TypeVar("E", bound=StrEnum)


# --- column types --------------------------------------------------------------------------------


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out, on every backend.

    PostgreSQL keeps the zone (timestamptz); SQLite stores text without one, so values are
    normalised to UTC before storing (keeping text comparisons in time order) and UTC is
    re-attached on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = require_aware(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StrEnumType(sa.TypeDecorator[E]):
    """A `StrEnum` stored as its plain string value; unknown values fail on the way in."""

    impl = sa.String(16)
    cache_ok = True

    def __init__(self, enum_type: type[E]) -> None:
        super().__init__()
        self.enum_type = enum_type

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        # A plain str (not the subclass) keeps every driver happy.
        return None if value is None else str(self.enum_type(value).value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_type(value)


def require_aware(value: datetime, name: str = "datetime") -> datetime:
    """`value` in UTC; a naive datetime is ambiguous, so it is refused rather than guessed."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value.astimezone(UTC)


# --- schema (must match the head migration) ------------------------------------------------------

metadata = sa.MetaData()

# SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("state", StrEnumType(JobState), nullable=False),
    sa.Column("outcome", StrEnumType(Outcome), nullable=True),
    # Discord snowflakes exceed 2**31.
    sa.Column("requester_id", sa.BigInteger(), nullable=False),
    sa.Column("guild_id", sa.BigInteger(), nullable=True),
    sa.Column("channel_id", sa.BigInteger(), nullable=False),
    sa.Column("thread_id", sa.BigInteger(), nullable=True),
    sa.Column("status_message_id", sa.BigInteger(), nullable=True),
    sa.Column("interaction_id", sa.BigInteger(), nullable=True),
    sa.Column("model", sa.Text(), nullable=False),
    sa.Column("prompt", sa.Text(), nullable=False),
    sa.Column("duration", sa.Integer(), nullable=False),
    sa.Column("resolution", sa.Text(), nullable=False),
    sa.Column("orientation", sa.Text(), nullable=False),
    sa.Column("fit", sa.Text(), nullable=False),
    sa.Column("image_width", sa.Integer(), nullable=False),
    sa.Column("image_height", sa.Integer(), nullable=False),
    sa.Column("image_data", sa.LargeBinary(), nullable=True),
    sa.Column("upload_limit_bytes", sa.BigInteger(), nullable=False),
    sa.Column("estimated_usd", sa.Double(), nullable=True),
    sa.Column("provider_job_id", sa.Text(), nullable=True),
    sa.Column("provider_status", sa.Text(), nullable=True),
    sa.Column("submit_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("poll_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("consecutive_errors", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_poll_at", UTCDateTime(), nullable=True),
    sa.Column("result_url", sa.Text(), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("cost_usd", sa.Double(), nullable=True),
    sa.Column("delivery_worker", sa.Text(), nullable=True),
    sa.Column("delivery_lease_until", UTCDateTime(), nullable=True),
    sa.Column("delivery_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("delivery_message_id", sa.BigInteger(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("submitted_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("delivered_at", UTCDateTime(), nullable=True),
    sa.Column("submit_worker", sa.Text(), nullable=True),
    sa.Column("submit_sent_at", UTCDateTime(), nullable=True),
    sa.Column("last_checked_at", UTCDateTime(), nullable=True),
    sa.Column("waited_seconds", sa.Double(), nullable=False, server_default="0"),
    sa.Column("delivery_note", sa.Text(), nullable=True),
    sa.Column("delivery_target", sa.Text(), nullable=True),
    sa.Column("parent_job_id", sa.BigInteger(), nullable=True),
    sa.Column("chain_length", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("joined_message_id", sa.BigInteger(), nullable=True),
    sa.Column("cancelled_by", sa.BigInteger(), nullable=True),
    sa.Column("end_image_data", sa.LargeBinary(), nullable=True),
    sa.Column("poll_worker", sa.Text(), nullable=True),
    sa.Column("interaction_token", sa.Text(), nullable=True),
    sa.Column("interaction_expires_at", UTCDateTime(), nullable=True),
    sa.Column("origin_guild_id", sa.BigInteger(), nullable=True),
    sa.Column("member_language", sa.Text(), nullable=True),
    sa.Column("public_language", sa.Text(), nullable=True),
    # The loop's hot queries: due polls by time, and the per-user quota.
    sa.Index("ix_jobs_state_next_poll_at", "state", "next_poll_at"),
    sa.Index("ix_jobs_requester_id_state", "requester_id", "state"),
)

# The fitted picture of every job, kept for the result buttons (Again, Edit prompt) for
# IMAGE_RETENTION_DAYS; apart from `jobs` so the hot queries never carry picture bytes.
job_images = sa.Table(
    "job_images",
    metadata,
    sa.Column("job_id", _ID, primary_key=True),
    sa.Column("image_data", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_job_images_created_at", "created_at"),
)

# Small key/value settings that must survive restarts (e.g. the slash-command fingerprint).
meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
)

JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Job))
_NEW_JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NewJob))
# Fields only the store itself may set: the key, and the columns transition() sets from its
# own arguments.
_MANAGED_FIELDS = frozenset({"id", "state", "updated_at"})

# Fail at import, not at the first query, if bot/jobs.py and the table drift apart.
if set(JOB_FIELDS) != set(jobs.c.keys()) or not set(_NEW_JOB_FIELDS) <= set(JOB_FIELDS):
    raise RuntimeError(
        "bot.store.jobs does not match bot.jobs.Job: "
        f"missing columns {sorted(set(JOB_FIELDS) - set(jobs.c.keys()))}, "
        f"extra columns {sorted(set(jobs.c.keys()) - set(JOB_FIELDS))}"
    )
_JOB_COLUMNS = tuple(jobs.c[name] for name in JOB_FIELDS)


def _row_to_job(row: sa.Row[Any]) -> Job:
    # The column types already did the conversions (enums, aware datetimes).
    mapping = row._mapping
    return Job(**{name: mapping[name] for name in JOB_FIELDS})


# --- engines and migrations ----------------------------------------------------------------------


def normalize_url(database_url: str) -> str:
    """The async-driver form of a database URL (postgres:// and sqlite:// are accepted too)."""
    scheme, sep, rest = database_url.partition("://")
    scheme = scheme.lower()
    if sep and scheme in ("postgres", "postgresql", "postgresql+asyncpg"):
        return "postgresql+asyncpg://" + rest
    if sep and scheme in ("sqlite", "sqlite+aiosqlite"):
        return "sqlite+aiosqlite://" + rest
    raise ValueError(
        f"unsupported database URL {mask_url_password(database_url)!r}: "
        "use sqlite+aiosqlite:///path or postgresql+asyncpg://user:password@host/db"
    )


def create_store_engine(
    database_url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    ping_after_idle_seconds: float = PING_AFTER_IDLE_SECONDS,
) -> AsyncEngine:
    """An engine configured for the store (SQLite: parent dir created, WAL, busy timeout).

    PostgreSQL: at most `pool_size` connections, all kept open once made; work beyond that
    waits its turn (every transaction is short). SQLAlchemy's default opened connections
    beyond 5 for each burst and closed them again, and each new connection costs the event
    loop milliseconds (bench/load.py).
    """
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() != "sqlite":
        url, connect_args = postgres_connect_options(url, os.environ)
        engine = create_async_engine(
            url, pool_size=pool_size, max_overflow=0, connect_args=connect_args
        )
        _ping_idle_connections(engine, ping_after_idle_seconds)
        return engine
    path = url.database
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)
    _configure_sqlite(engine)
    return engine


def _ping_idle_connections(engine: AsyncEngine, idle_seconds: float) -> None:
    """SQLAlchemy's pool_pre_ping, for connections that sat unused for `idle_seconds` only.

    The bot runs for weeks; a database restart must not poison the pool. But a ping before
    every transaction is one more round trip each time (13% of the event loop's time under
    bench/load.py), and a connection used a moment ago is alive. A restart is then noticed by
    one failed transaction at most, after which SQLAlchemy renews the whole pool.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last_used = record.info.get(_LAST_USED)
        if last_used is not None and time.monotonic() - last_used < idle_seconds:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:
            # The pool drops this connection and hands out a new one (up to three tries).
            raise sa.exc.DisconnectionError("pooled connection no longer answers") from exc


def postgres_connect_options(url: URL, env: Mapping[str, str]) -> tuple[URL, dict[str, Any]]:
    """The URL and connect arguments asyncpg gets for a PostgreSQL `url`.

    An explicit `sslmode` (libpq's name, e.g. `?sslmode=require` from a hosting provider) is
    passed on as asyncpg's `ssl`, which takes the same modes (asyncpg refuses `sslmode`
    itself); `ssl` and PGSSLMODE are left to asyncpg. Without any of them, a server on this
    machine (loopback address or Unix socket) is spoken to without TLS: asyncpg's default
    ("prefer") would otherwise offer TLS on every new connection, which protects nothing on
    loopback and costs time. Any other host keeps asyncpg's default.
    """
    query = dict(url.query)
    if "sslmode" in query:
        sslmode = query.pop("sslmode")
        url = url.set(query=query)
        if "ssl" not in query:
            # A repeated key arrives as a tuple; libpq uses the last one.
            return url, {"ssl": sslmode[-1] if isinstance(sslmode, tuple) else sslmode}
        return url, {}
    if "ssl" in query or env.get("PGSSLMODE"):
        return url, {}
    named = query.get("host", url.host)
    if named is None:
        named = env.get("PGHOST") or "/"  # none named: asyncpg tries the local sockets
    hosts = named.split(",") if isinstance(named, str) else list(named)
    if all(_on_this_machine(host) for host in hosts):
        return url, {"ssl": False}
    return url, {}


def _on_this_machine(host: str) -> bool:
    host = host.strip()
    if host.startswith("/") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to the "begin" hook below: the driver's implicit BEGIN
        # skips DDL, which would make a migration non-atomic.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets readers proceed while another connection (or process) writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_SQLITE_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic settings built in code, so no alembic.ini is needed in the working directory."""
    cfg = Config()
    # ConfigParser interpolation: a literal % in the path must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to `revision` in one transaction; safe to run from several processes."""
    async with engine.connect() as conn:
        await conn.execution_options(**{_SQLITE_IMMEDIATE: True})
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                # Two workers starting together must not both create the tables.
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            await conn.run_sync(_run_upgrade, revision)


def _run_upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


async def revision_of(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Migrate the database at `database_url` to `revision` (tests build old schemas with it)."""
    engine = create_store_engine(database_url)
    try:
        await migrate(engine, revision)
    finally:
        await engine.dispose()


async def current_revision(database_url: str) -> str | None:
    """The Alembic revision the database is at, or None when it has never been migrated."""
    engine = create_store_engine(database_url)
    try:
        return await revision_of(engine)
    finally:
        await engine.dispose()


# --- the store -----------------------------------------------------------------------------------


class JobStore:
    """All job persistence. Every method is one short transaction; none keeps ORM objects."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Plain connections, not ORM sessions: every statement here is Core, and a session
        # built a transaction object, weak dictionaries and snapshots per call for nothing
        # (more garbage for the collector's passes under load).
        self._read = engine.connect
        self._write = engine.execution_options(**{_SQLITE_IMMEDIATE: True})
        # SQLite < 3.35 has no RETURNING; then UPDATE + re-read inside the same transaction.
        self._returning = engine.dialect.update_returning and engine.dialect.insert_returning

    @classmethod
    async def open(
        cls, database_url: str, *, migrate: bool = True, pool_size: int = DEFAULT_POOL_SIZE
    ) -> JobStore:
        engine = create_store_engine(database_url, pool_size=pool_size)
        safe_url = mask_url_password(normalize_url(database_url))
        try:
            if migrate and _in_memory(database_url):
                await _migrate(engine)  # another engine would see another database
            elif migrate:
                # Alembic loads and runs its scripts synchronously (~0.2 s on a new database):
                # in a thread of its own, with its own engine, so the event loop stays free.
                await asyncio.to_thread(_migrate_blocking, database_url)
            else:
                revision = await revision_of(engine)
                if revision != await asyncio.to_thread(head_revision):
                    log.warning(
                        "database %s is at revision %s, not %s; run the migrations",
                        safe_url,
                        revision,
                        head_revision(),
                    )
            await _fill_pool(engine, pool_size)
        except BaseException:
            await engine.dispose()
            raise
        log.info("job store open at %s", safe_url)
        return cls(engine)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def close(self) -> None:
        await self._engine.dispose()

    # --- single jobs ----------------------------------------------------------------------------

    async def create(
        self,
        new: NewJob,
        *,
        now: datetime,
        submit_lease_until: datetime | None = None,
        worker: str | None = None,
    ) -> Job:
        """Record an accepted request as `submitting`; counters start at 0, times at `now`.

        `submit_lease_until` leases the submission to `worker` in the same INSERT, so no
        background pass can pick the job up (and pay for it twice) before the caller submits.
        """
        now = require_aware(now, "now")
        values: dict[str, Any] = {name: getattr(new, name) for name in _NEW_JOB_FIELDS}
        values.update(state=JobState.SUBMITTING, created_at=now, updated_at=now)
        if submit_lease_until is not None:
            values.update(
                next_poll_at=require_aware(submit_lease_until, "submit_lease_until"),
                submit_attempts=1,
                submit_worker=worker,
            )
        insert = jobs.insert().values(values)
        async with self._write.begin() as conn:
            if self._returning:
                job: Job | None = _row_to_job(
                    (await conn.execute(insert.returning(*_JOB_COLUMNS))).one()
                )
            else:
                inserted = (await conn.execute(insert)).inserted_primary_key
                job = await self._select_one(conn, inserted[0] if inserted else None)
            if job is None:
                raise RuntimeError("the inserted job could not be read back")
            # Kept for the result buttons (Again, Edit prompt) after the job's own copy is gone.
            await conn.execute(
                job_images.insert().values(job_id=job.id, image_data=new.image_data, created_at=now)
            )
        return job

    async def kept_image(self, job_id: int) -> bytes | None:
        """The job's fitted picture, or None once retention removed it."""
        query = sa.select(job_images.c.image_data).where(job_images.c.job_id == job_id)
        async with self._read() as conn:
            value = (await conn.execute(query)).scalar_one_or_none()
        return None if value is None else bytes(value)

    async def forget_images(self, *, older_than: datetime) -> int:
        """Remove kept pictures recorded before `older_than`; returns how many."""
        cutoff = require_aware(older_than, "older_than")
        statement = job_images.delete().where(job_images.c.created_at < cutoff)
        async with self._write.begin() as conn:
            result = await conn.execute(statement)
        return int(getattr(result, "rowcount", 0) or 0)

    async def forget_interaction_token(self, job_id: int) -> None:
        """A credential, useless once the job is done (and its status shown): not kept."""
        statement = jobs.update().where(jobs.c.id == job_id).values(interaction_token=None)
        async with self._write.begin() as conn:
            await conn.execute(statement)

    async def forget_interaction_tokens(self, *, now: datetime) -> int:
        """Clear interaction tokens that can no longer be used (expired, or the job is done but
        ended without a delivery: cancelled, abandoned); returns how many."""
        now = require_aware(now, "now")
        statement = (
            jobs.update()
            .where(
                jobs.c.interaction_token.is_not(None),
                sa.or_(jobs.c.state == JobState.DONE, jobs.c.interaction_expires_at < now),
            )
            .values(interaction_token=None)
        )
        async with self._write.begin() as conn:
            result = await conn.execute(statement)
        return int(getattr(result, "rowcount", 0) or 0)

    async def get(self, job_id: int) -> Job | None:
        async with self._read() as conn:
            return await self._select_one(conn, job_id)

    async def transition(
        self,
        job_id: int,
        *,
        from_states: Collection[JobState],
        to_state: JobState | None = None,
        now: datetime,
        **changes: Any,
    ) -> Job | None:
        """Compare-and-set: apply `changes` (and `to_state`) only if the job is in `from_states`.

        Returns the updated job, or None when the job is elsewhere (another task or worker moved
        it first) or does not exist. Unknown or store-managed field names raise TypeError.
        """
        now = require_aware(now, "now")
        values = _checked_changes(changes)
        states = [JobState(state) for state in from_states]
        values["updated_at"] = now
        if to_state is not None:
            values["state"] = JobState(to_state)
        return await self._update_one(job_id, jobs.c.state.in_(states), values)

    async def claim_submit(
        self,
        job_id: int,
        *,
        now: datetime,
        lease_seconds: float,
        worker: str | None = None,
        in_flight_grace_seconds: float = 0.0,
    ) -> Job | None:
        """Lease a `submitting` job whose (re)submission is due: next_poll_at moves a lease ahead.

        next_poll_at doubles as the submit lease: a worker submitting the job keeps it in the
        future, so only a crashed (or rate-limited, now due) submission is picked up again. A job
        whose request may already have reached the provider (`submit_sent_at` set) is taken only
        `in_flight_grace_seconds` after its lease ran out (see JobService for the rule).
        """
        due, values = _submit_claim(
            require_aware(now, "now"), lease_seconds, worker, in_flight_grace_seconds
        )
        return await self._update_one(job_id, due, values)

    async def hold_submit(
        self,
        job_id: int,
        *,
        worker: str,
        now: datetime,
        lease_seconds: float,
        sending: bool = False,
    ) -> Job | None:
        """Renew `worker`'s submit lease; None if the job is no longer `worker`'s to submit.

        With `sending`, also records that the request is about to leave (`submit_sent_at`): the
        last check before money is spent.
        """
        now = require_aware(now, "now")
        held = sa.and_(jobs.c.state == JobState.SUBMITTING, jobs.c.submit_worker == worker)
        values: dict[str, Any] = {"next_poll_at": now + _lease(lease_seconds), "updated_at": now}
        if sending:
            values["submit_sent_at"] = now
        return await self._update_one(job_id, held, values)

    async def claim_delivery(
        self, job_id: int, *, worker: str, now: datetime, lease_seconds: float
    ) -> Job | None:
        """Take the delivery of a finished job for `worker`; None if someone else holds it.

        Claimable: `to_deliver`, or `delivering` whose lease has run out (its worker died).
        One conditional UPDATE, so of any number of concurrent claimers exactly one wins.
        """
        claimable, values = _delivery_claim(require_aware(now, "now"), lease_seconds, worker)
        return await self._update_one(job_id, claimable, values)

    async def hold_delivery(
        self, job_id: int, *, worker: str, now: datetime, lease_seconds: float
    ) -> bool:
        """Renew `worker`'s delivery lease while it downloads or uploads; False if lost."""
        now = require_aware(now, "now")
        held = sa.and_(jobs.c.state == JobState.DELIVERING, jobs.c.delivery_worker == worker)
        values = {"delivery_lease_until": now + _lease(lease_seconds), "updated_at": now}
        return await self._update_one(job_id, held, values) is not None

    async def release_delivery(self, job_id: int, *, worker: str, now: datetime) -> bool:
        """Hand an unfinished delivery back (at shutdown): any worker may claim it at once."""
        now = require_aware(now, "now")
        held = sa.and_(jobs.c.state == JobState.DELIVERING, jobs.c.delivery_worker == worker)
        values = {"delivery_lease_until": now, "updated_at": now}
        return await self._update_one(job_id, held, values) is not None

    async def finish_delivery(
        self, job_id: int, *, worker: str, now: datetime, message_id: int | None
    ) -> bool:
        """Mark the job done if `worker` still holds its delivery; False if the lease was lost.

        An expired lease that nobody has taken over is still ours: finishing it is correct, and
        refusing would make the next worker post the result a second time.
        """
        now = require_aware(now, "now")
        held = sa.and_(jobs.c.state == JobState.DELIVERING, jobs.c.delivery_worker == worker)
        values = {
            "state": JobState.DONE,
            "delivered_at": now,
            "delivery_message_id": message_id,
            "delivery_lease_until": None,
            "updated_at": now,
        }
        return await self._update_one(job_id, held, values) is not None

    async def claim_due_polls(
        self, now: datetime, *, worker: str, lease_seconds: float, limit: int
    ) -> list[Job]:
        """Take up to `limit` due polls for `worker`, most overdue first, in one transaction.

        The claim moves each job's next_poll_at a lease ahead (and names `worker` in
        poll_worker), so no other process polls it until this worker has written its next
        planned time, renewed the lease (`hold_poll`) or died. PostgreSQL picks the rows with
        `FOR UPDATE SKIP LOCKED`: processes claiming at the same moment split the due jobs
        instead of queueing on each other's rows. SQLite's write transaction is exclusive.

        Jobs come back as they were before the claim (next_poll_at is the time the poll was
        planned for, which the timeout accounting needs), with poll_worker set to `worker`.
        """
        now = require_aware(now, "now")
        lease = _lease(lease_seconds)
        if limit <= 0:
            return []
        pick = (
            sa.select(*_JOB_COLUMNS)
            .where(jobs.c.state == JobState.POLLING, jobs.c.next_poll_at <= now)
            .order_by(jobs.c.next_poll_at, jobs.c.id)
            .limit(limit)
        )
        if self._engine.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        async with self._write.begin() as conn:
            picked = [_row_to_job(row) for row in (await conn.execute(pick)).all()]
            if not picked:
                return []
            claim = (
                jobs.update()
                .where(self._id_in([job.id for job in picked]))
                .values(next_poll_at=now + lease, poll_worker=worker, updated_at=now)
            )
            await conn.execute(claim)
        return [dataclasses.replace(job, poll_worker=worker) for job in picked]

    async def claim_due_submits(
        self,
        now: datetime,
        *,
        worker: str,
        lease_seconds: float,
        limit: int,
        in_flight_grace_seconds: float = 0.0,
    ) -> list[Job]:
        """Lease up to `limit` due (re)submissions for `worker` in one transaction, oldest first.

        Due and leased as in `claim_submit` (next_poll_at moves a lease ahead, submit_attempts
        counts up, `worker` is named in submit_worker); jobs come back as claimed.
        """
        due, values = _submit_claim(
            require_aware(now, "now"), lease_seconds, worker, in_flight_grace_seconds
        )
        order = (sa.func.coalesce(jobs.c.next_poll_at, jobs.c.created_at), jobs.c.id)
        return await self._claim_many(due, order, values, limit)

    async def claim_due_deliveries(
        self,
        now: datetime,
        *,
        worker: str,
        lease_seconds: float,
        limit: int,
        skip: Collection[int] = (),
    ) -> list[Job]:
        """Take up to `limit` deliveries for `worker` in one transaction, longest waiting first.

        Claimable as in `claim_delivery` (`to_deliver`, or `delivering` with a lapsed lease);
        jobs in `skip` (the ones this process is posting already) are left alone. Jobs come back
        as claimed: `delivering`, held by `worker` for a lease.
        """
        claimable, values = _delivery_claim(require_aware(now, "now"), lease_seconds, worker)
        if skip:
            claimable = sa.and_(claimable, sa.not_(self._id_in(skip)))
        return await self._claim_many(claimable, (jobs.c.updated_at, jobs.c.id), values, limit)

    async def hold_poll(
        self, job_id: int, *, worker: str, now: datetime, lease_seconds: float
    ) -> bool:
        """Renew `worker`'s poll lease while its provider request runs; False if another
        worker has claimed the job's poll since (or it is no longer polling)."""
        now = require_aware(now, "now")
        held = sa.and_(jobs.c.state == JobState.POLLING, jobs.c.poll_worker == worker)
        values = {"next_poll_at": now + _lease(lease_seconds), "updated_at": now}
        return await self._update_one(job_id, held, values) is not None

    # --- the background loop's queries ------------------------------------------------------------

    async def due_for_poll(self, now: datetime, limit: int) -> list[Job]:
        """`polling` jobs whose next poll is due, most overdue first."""
        now = require_aware(now, "now")
        query = (
            sa.select(*_JOB_COLUMNS)
            .where(jobs.c.state == JobState.POLLING, jobs.c.next_poll_at <= now)
            .order_by(jobs.c.next_poll_at, jobs.c.id)
            .limit(limit)
        )
        return await self._select_many(query)

    async def due_for_submit(
        self, now: datetime, limit: int, *, in_flight_grace_seconds: float = 0.0
    ) -> list[Job]:
        """`submitting` jobs whose submit lease (next_poll_at) is unset or has run out."""
        now = require_aware(now, "now")
        query = (
            sa.select(*_JOB_COLUMNS)
            .where(jobs.c.state == JobState.SUBMITTING, _submit_due(now, in_flight_grace_seconds))
            .order_by(sa.func.coalesce(jobs.c.next_poll_at, jobs.c.created_at), jobs.c.id)
            .limit(limit)
        )
        return await self._select_many(query)

    async def due_for_delivery(self, now: datetime, limit: int) -> list[Job]:
        """Jobs waiting for a worker: `to_deliver`, or `delivering` with an expired lease."""
        now = require_aware(now, "now")
        query = (
            sa.select(*_JOB_COLUMNS)
            .where(
                sa.or_(
                    jobs.c.state == JobState.TO_DELIVER,
                    sa.and_(jobs.c.state == JobState.DELIVERING, _lease_expired(now)),
                )
            )
            .order_by(jobs.c.updated_at, jobs.c.id)
            .limit(limit)
        )
        return await self._select_many(query)

    async def unsubmitted(self, limit: int) -> list[Job]:
        """Every `submitting` job, oldest first (what a crash may have left behind)."""
        query = (
            sa.select(*_JOB_COLUMNS)
            .where(jobs.c.state == JobState.SUBMITTING)
            .order_by(jobs.c.created_at, jobs.c.id)
            .limit(limit)
        )
        return await self._select_many(query)

    async def count_active(self, requester_id: int) -> int:
        query = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.requester_id == requester_id, jobs.c.state.in_(ACTIVE_STATES))
        )
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def recent_for(self, requester_id: int, limit: int = 10) -> list[Job]:
        """A member's latest jobs, newest first (for /jobs). `image_data` reads as None: the
        fitted picture of an unsubmitted job can be megabytes, and a listing never needs it."""
        columns = [
            sa.null().label("image_data") if column.name == "image_data" else column
            for column in _JOB_COLUMNS
        ]
        query = (
            sa.select(*columns)
            .where(jobs.c.requester_id == requester_id)
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .limit(limit)
        )
        return await self._select_many(query)

    async def next_wakeup(self) -> datetime | None:
        """The earliest scheduled poll, so a loop can sleep until then."""
        query = sa.select(sa.func.min(jobs.c.next_poll_at)).where(jobs.c.state == JobState.POLLING)
        async with self._read() as conn:
            # min() keeps the column's type, so this is already an aware UTC datetime.
            value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    # --- meta -------------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        async with self._read() as conn:
            query = sa.select(meta.c.value).where(meta.c.key == key)
            value = (await conn.execute(query)).scalar_one_or_none()
        return None if value is None else str(value)

    async def meta_with_prefix(self, prefix: str) -> dict[str, str]:
        """Every meta entry whose key starts with `prefix`."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = sa.select(meta.c.key, meta.c.value).where(
            meta.c.key.like(escaped + "%", escape="\\")
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return {str(key): str(value) for key, value in rows}

    async def set_meta(self, key: str, value: str) -> None:
        insert = (
            pg_dialect.insert(meta)
            if self._engine.dialect.name == "postgresql"
            else sqlite_dialect.insert(meta)
        )
        upsert = insert.values(key=key, value=value).on_conflict_do_update(
            index_elements=[meta.c.key], set_={"value": value}
        )
        async with self._write.begin() as conn:
            await conn.execute(upsert)

    # --- helpers ----------------------------------------------------------------------------------

    async def _update_one(
        self, job_id: int, condition: sa.ColumnElement[bool], values: Mapping[str, Any]
    ) -> Job | None:
        statement = jobs.update().where(jobs.c.id == job_id, condition).values(dict(values))
        async with self._write.begin() as conn:
            if self._returning:
                result = await conn.execute(statement.returning(*_JOB_COLUMNS))
                row = result.one_or_none()
                return None if row is None else _row_to_job(row)
            # Without RETURNING: the write lock (SQLite) or row lock (PostgreSQL) taken by
            # the UPDATE is held until commit, so the re-read sees exactly what we wrote.
            if (await conn.execute(statement)).rowcount != 1:
                return None
            return await self._select_one(conn, job_id)

    async def _claim_many(
        self,
        claimable: sa.ColumnElement[bool],
        order: Sequence[sa.ColumnElement[Any]],
        values: Mapping[str, Any],
        limit: int,
    ) -> list[Job]:
        """Pick up to `limit` claimable rows and update them, in one transaction.

        PostgreSQL picks with `FOR UPDATE SKIP LOCKED`, so workers claiming at the same moment
        take different rows instead of reading the same ones and all but one losing the
        claim; SQLite's write transaction is exclusive. The update repeats the condition, so
        a row is never claimed unless it still is claimable.
        """
        if limit <= 0:
            return []
        pick = sa.select(jobs.c.id).where(claimable).order_by(*order).limit(limit)
        if self._engine.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        async with self._write.begin() as conn:
            ids = list((await conn.execute(pick)).scalars())
            if not ids:
                return []
            claim = jobs.update().where(self._id_in(ids), claimable).values(dict(values))
            if self._returning:
                rows = (await conn.execute(claim.returning(*_JOB_COLUMNS))).all()
            else:
                # Only SQLite lacks RETURNING, and its exclusive write transaction means every
                # picked row was just updated by us: re-read them.
                await conn.execute(claim)
                reread = sa.select(*_JOB_COLUMNS).where(jobs.c.id.in_(ids))
                rows = list((await conn.execute(reread)).all())
        claimed = {job.id: job for job in map(_row_to_job, rows)}
        return [claimed[job_id] for job_id in ids if job_id in claimed]  # in the order picked

    def _id_in(self, ids: Collection[int]) -> sa.ColumnElement[bool]:
        """`jobs.id IN ids`, on PostgreSQL as one SQL text whatever the number of ids (`= ANY`
        of an array). Each distinct text is a prepared statement cached on every pooled
        connection with a description of each column it returns: claims of 1 to 128 ids made
        up to 128 texts, about half of what a full garbage-collection pass walked under
        bench/load.py."""
        if self._engine.dialect.name == "postgresql":
            array = sa.literal(list(ids), pg_dialect.ARRAY(sa.BigInteger()))
            return jobs.c.id == sa.any_(array)
        return jobs.c.id.in_(list(ids))

    async def _select_one(self, conn: AsyncConnection, job_id: Any) -> Job | None:
        query = sa.select(*_JOB_COLUMNS).where(jobs.c.id == job_id)
        row = (await conn.execute(query)).one_or_none()
        return None if row is None else _row_to_job(row)

    async def _select_many(self, query: sa.Select[Any]) -> list[Job]:
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [_row_to_job(row) for row in rows]


def _in_memory(database_url: str) -> bool:
    url = make_url(normalize_url(database_url))
    memory = url.database in (None, "", ":memory:") or "mode=memory" in (url.database or "")
    return url.get_backend_name() == "sqlite" and memory


async def _fill_pool(engine: AsyncEngine, size: int) -> None:
    """Open the pool's connections now, at start-up, rather than one by one under the first
    load (each costs the event loop a few milliseconds: address, password file, handshake)."""
    if engine.dialect.name != "postgresql":
        return
    async with contextlib.AsyncExitStack() as held:
        # Held together, so the pool has to make `size` of them.
        await asyncio.gather(*(held.enter_async_context(engine.connect()) for _ in range(size)))


def _migrate_blocking(database_url: str) -> None:
    """Migrate from a thread that is not running an event loop (its own loop, own engine)."""

    async def upgrade() -> None:
        engine = create_store_engine(database_url)
        try:
            await _migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(upgrade())


async def _migrate(engine: AsyncEngine) -> None:
    before = await revision_of(engine)
    await migrate(engine)
    after = await revision_of(engine)
    if before != after:
        log.info("database migrated from %s to %s", before or "empty", after)


def _checked_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(name for name in changes if name not in JOB_FIELDS)
    if unknown:
        raise TypeError(f"not Job fields: {', '.join(unknown)}")
    managed = sorted(name for name in changes if name in _MANAGED_FIELDS)
    if managed:
        raise TypeError(
            f"{', '.join(managed)} cannot be changed directly (use to_state; updated_at is now)"
        )
    values = dict(changes)
    for name, value in values.items():
        if isinstance(value, datetime):
            values[name] = require_aware(value, name)
    return values


def _lease(lease_seconds: float) -> timedelta:
    if not lease_seconds > 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
    return timedelta(seconds=lease_seconds)


def _submit_claim(
    now: datetime, lease_seconds: float, worker: str | None, in_flight_grace_seconds: float
) -> tuple[sa.ColumnElement[bool], dict[str, Any]]:
    """Which jobs a submit claim may take, and what taking one writes (one job or many)."""
    due = sa.and_(jobs.c.state == JobState.SUBMITTING, _submit_due(now, in_flight_grace_seconds))
    values = {
        "next_poll_at": now + _lease(lease_seconds),
        "submit_attempts": jobs.c.submit_attempts + 1,
        "submit_worker": worker,
        "updated_at": now,
    }
    return due, values


def _delivery_claim(
    now: datetime, lease_seconds: float, worker: str
) -> tuple[sa.ColumnElement[bool], dict[str, Any]]:
    """Which jobs a delivery claim may take (`to_deliver`, or `delivering` whose lease ran out:
    its worker died), and what taking one writes."""
    claimable = sa.or_(
        jobs.c.state == JobState.TO_DELIVER,
        sa.and_(jobs.c.state == JobState.DELIVERING, _lease_expired(now)),
    )
    values = {
        "state": JobState.DELIVERING,
        "delivery_worker": worker,
        "delivery_lease_until": now + _lease(lease_seconds),
        "delivery_attempts": jobs.c.delivery_attempts + 1,
        "updated_at": now,
    }
    return claimable, values


def _submit_due(now: datetime, in_flight_grace_seconds: float) -> sa.ColumnElement[bool]:
    """The submit lease has run out (and, if a request may be in flight, the grace too)."""
    in_flight_cutoff = now - timedelta(seconds=in_flight_grace_seconds)
    return sa.or_(
        jobs.c.next_poll_at.is_(None),
        sa.and_(jobs.c.submit_sent_at.is_(None), jobs.c.next_poll_at <= now),
        sa.and_(jobs.c.submit_sent_at.is_not(None), jobs.c.next_poll_at <= in_flight_cutoff),
    )


def _lease_expired(now: datetime) -> sa.ColumnElement[bool]:
    # A `delivering` row without a lease can only come from a bug or a manual edit; treating it
    # as expired lets the job finish instead of hanging forever.
    return sa.or_(jobs.c.delivery_lease_until.is_(None), jobs.c.delivery_lease_until < now)
