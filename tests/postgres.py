"""A throwaway PostgreSQL server for tests, plus the fixtures that use it.

Use from a test module with `pytest_plugins = ["tests.postgres"]`, then ask for `postgres_url`
(one server per test session) or `store_url` (a fresh empty database per test, once on SQLite
and once on PostgreSQL).

The server binaries come from `pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH (Debian:
`apt-get install postgresql`). initdb refuses to run as root, so under root the server runs as
the `postgres` user when it exists, else as `nobody`. Without binaries the PostgreSQL tests are
skipped, except when $CI is set: there a silently skipped backend would hide regressions.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from bot.store import JobStore

SUPERUSER = "test"
DATABASE = "test"
START_TIMEOUT_SECONDS = 30


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL installation on this machine."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_bindir() -> Path:
    """The directory holding initdb and postgres, newest major version first."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))

    def major(path: Path) -> int:
        match = re.search(r"/(\d+)/bin$", str(path))
        return int(match.group(1)) if match else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        # Debian's pg_config (libpq-dev) may point at /usr/bin, which has no server.
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL binaries not found (install Debian's postgresql package: "
        "apt-get install -y postgresql); looked in pg_config --bindir, "
        "/usr/lib/postgresql/*/bin and PATH"
    )


@dataclass(frozen=True)
class _RunAs:
    uid: int | None
    gid: int | None
    name: str


def _server_user() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs(None, None, pwd.getpwuid(os.geteuid()).pw_name)
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(entry.pw_uid, entry.pw_gid, name)
    raise PostgresUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """initdb + pg_ctl start in a temporary directory; `stop()` removes every trace."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="animate-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.logfile = self.root / "server.log"
        self.port = 0
        self._started = False

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # Python drops privileges itself (no runuser/su needed); HOME is reset because root's
        # home is unreadable for the server user.
        env = {**os.environ, "HOME": str(self.root), "LC_ALL": "C"}
        extra: dict[str, Any] = {}
        if self.user.uid is not None:
            extra = {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
        result = subprocess.run(
            args, capture_output=True, text=True, env=env, timeout=timeout, check=False, **extra
        )
        if result.returncode != 0:
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{log[-4000:]}"
            )
        return result

    def start(self) -> None:
        self.sockets.mkdir()
        if self.user.uid is not None and self.user.gid is not None:
            for path in (self.root, self.sockets):
                os.chown(path, self.user.uid, self.user.gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data),
            "-U", SUPERUSER,
            "--auth=trust",  # a loopback-only throwaway server
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )  # fmt: skip
        # A port picked now may be taken before the server binds it; try a few.
        for attempt in range(3):
            self.port = _free_port()
            options = " ".join(
                (
                    f"-p {self.port}",
                    "-c listen_addresses=127.0.0.1",
                    f"-c unix_socket_directories={self.sockets}",
                    # Durability is pointless for a test server; speed is not.
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=100",
                )
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    "start", "-w", "-t", str(START_TIMEOUT_SECONDS),
                    "-D", str(self.data), "-l", str(self.logfile), "-o", options,
                    timeout=START_TIMEOUT_SECONDS + 10,
                )  # fmt: skip
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            self._started = True
            break
        self._create_database(DATABASE)

    def _create_database(self, name: str) -> None:
        self._run(
            str(self.bindir / "createdb"),
            "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name,
        )  # fmt: skip

    def stop(self) -> None:
        try:
            if self._started:
                self._run(
                    str(self.bindir / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(self.data)
                )
                self._started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _unavailable(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so the PostgreSQL tests must run)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server, stopped and deleted on exit (usable outside pytest, e.g. benchmarks)."""
    server = PostgresServer(find_bindir())
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        find_bindir()
        _server_user()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """`postgresql+asyncpg://test@127.0.0.1:PORT/test` on a server private to this session."""
    return postgres_server.url


@pytest.fixture
async def fresh_postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A new empty database for one test, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(
        host="127.0.0.1", port=postgres_server.port, user=SUPERUSER, database=DATABASE
    )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres_server.url_for(name)
    admin = await asyncpg.connect(
        host="127.0.0.1", port=postgres_server.port, user=SUPERUSER, database=DATABASE
    )
    try:
        # FORCE: a test that failed half-way may have left connections open.
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL for each backend; the server starts only when needed."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[JobStore]:
    """A migrated store on each backend, closed afterwards."""
    opened = await JobStore.open(store_url)
    try:
        yield opened
    finally:
        await opened.close()
