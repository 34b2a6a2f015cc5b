"""Alembic environment for the job store.

The bot runs migrations itself (`JobStore.open` → `bot.store.migrate`), passing an open
connection in `config.attributes["connection"]` from inside its event loop (run_sync), so
nothing here may start a loop then. Run by hand (e.g. `alembic revision --autogenerate` with a
config whose script_location is this directory), it connects to `config.attributes["url"]`,
`sqlalchemy.url` or $DATABASE_URL with the store's own async engine.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from bot.store import create_store_engine, metadata

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; autogenerate should emit batch operations.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    # Inside the caller's transaction this is a no-op: the caller commits everything at once.
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone(url: str) -> None:
    engine = create_store_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not supported; run against a database")
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        run_on(connection)
        return
    url = (
        config.attributes.get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise RuntimeError("no database: pass a connection, sqlalchemy.url or DATABASE_URL")
    asyncio.run(run_standalone(str(url)))


main()
