"""`python -m bot` as a separate process, configured only by environment, against both fakes.

These are the restart-safety tests: the process is killed (SIGKILL, no clean-up) while a job is
being submitted, polled or uploaded, then started again. Every job must still end with exactly
one video in its thread. Then the start-up failures: each is one log line, no traceback, with
exit code 1 after retrying (waiting might help) or 2 at once (it cannot).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.fake_discord import FakeDiscord, FakeMessage
from tests.fake_provider import FakeProvider
from tests.postgres import SUPERUSER, PostgresServer

REPO = Path(__file__).resolve().parents[1]
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 32
RETRY_LINE = "Trying again in"


def bot_command(*, attempts: int | None = None) -> list[str]:
    """`python -m bot`, or the same entry point with a short retry policy (fast tests)."""
    if attempts is None:
        return [sys.executable, "-m", "bot"]
    code = (
        "import sys; from bot.__main__ import StartupRetry, main; "
        f"sys.exit(main([], retry=StartupRetry(attempts={attempts}, first_delay=0.01)))"
    )
    return [sys.executable, "-c", code]


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, so nobody takes it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def problem_lines(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1400, 800), (200, 60, 90)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Fakes:
    discord: FakeDiscord
    provider: FakeProvider
    guild_id: int
    channel_id: int
    user_id: int
    tmp: Path

    def environment(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp),
            "PYTHONPATH": str(REPO),
            "DISCORD_TOKEN": self.discord.bot_token,
            "AIMLAPI_KEY": "test-key",
            "AIMLAPI_BASE_URL": self.provider.base_url,
            "DISCORD_API_BASE_URL": self.discord.rest_base_url,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
            "DATABASE_URL": f"sqlite:///{self.tmp / 'data' / 'jobs.db'}",
            "DEV_GUILD_ID": str(self.guild_id),
            "POLL_SCHEDULE": "fixed",
            "POLL_MIN_INTERVAL_SECONDS": "0.3",
            "POLL_TICK_SECONDS": "0.2",
            "LEASE_SECONDS": "3",
            "SUBMIT_IN_FLIGHT_GRACE_SECONDS": "1",
        }

    @contextmanager
    def bot_process(self, log_name: str) -> Iterator[subprocess.Popen[bytes]]:
        log = (self.tmp / log_name).open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "bot"],
            cwd=self.tmp,
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()

    async def wait_ready(self, process: subprocess.Popen[bytes], connections: int) -> None:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"bot exited with {process.returncode}:\n{self.logs()}")
            return len(self.discord.identify_payloads) >= connections and bool(
                self.discord.commands.guild_commands.get(self.guild_id)
            )

        await self.discord.wait_for(ready, timeout=30)

    async def animate(self) -> None:
        attachment = self.discord.add_attachment(photo(), "photo.jpg", "image/jpeg")
        await self.discord.invoke_command(
            "animate",
            {"image": attachment, "prompt": "a slow zoom @everyone"},
            user_id=self.user_id,
            guild_id=self.guild_id,
            channel_id=self.channel_id,
        )

    def bot_messages(self, channel_id: int) -> list[FakeMessage]:
        return [
            m
            for m in self.discord.messages(channel_id)
            if m.author_id == self.discord.bot_user_id and m.source == "channel"
        ]

    def thread_id(self) -> int:
        [thread] = self.discord.threads()
        return int(thread["id"])

    def videos(self) -> list[FakeMessage]:
        threads = self.discord.threads()
        if not threads:
            return []
        return [
            m
            for m in self.bot_messages(self.thread_id())
            if any(a.filename.endswith(".mp4") for a in m.attachments)
        ]

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))

    async def run_to_exit(
        self, log_name: str, *, attempts: int | None = None, **overrides: str
    ) -> tuple[int, str]:
        """Run the bot with some settings changed until it exits; its exit code and output."""
        with (self.tmp / log_name).open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *bot_command(attempts=attempts),
                cwd=self.tmp,
                env={**self.environment(), **overrides},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            returncode = await asyncio.wait_for(process.wait(), timeout=60)
        return returncode, (self.tmp / log_name).read_text(errors="replace")


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[Fakes]:
    discord_server = FakeDiscord()
    provider = FakeProvider()
    await discord_server.start()
    await provider.start()
    guild_id = discord_server.add_guild("Studio")
    channel_id = discord_server.add_text_channel(guild_id, "animate")
    user_id = discord_server.add_user("grace")
    try:
        yield Fakes(discord_server, provider, guild_id, channel_id, user_id, tmp_path)
        assert discord_server.openapi_violations == []
        logs = Fakes(discord_server, provider, guild_id, channel_id, user_id, tmp_path).logs()
        assert discord_server.bot_token not in logs and "test-key" not in logs
        assert "Traceback" not in logs, logs
    finally:
        await provider.close()
        await discord_server.close()


def test_bad_configuration_exits_2_naming_every_problem(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "MAX_IMAGE_BYTES": "lots",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    for name in ("DISCORD_TOKEN", "AIMLAPI_KEY", "MAX_IMAGE_BYTES", ".env.example"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_dotenv_is_read_but_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DISCORD_TOKEN=from-file\nAIMLAPI_KEY=from-file\nLOG_LEVEL=LOUD\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "LOG_LEVEL": "SHOUTY"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The keys came from .env (not reported missing); LOG_LEVEL came from the environment.
    assert result.returncode == 2
    assert "DISCORD_TOKEN" not in result.stderr and "SHOUTY" in result.stderr


async def test_killed_while_polling_the_video_still_arrives_once(fakes: Fakes) -> None:
    fakes.provider.script_next_job(["queued"] + ["generating"] * 12 + ["completed"], video=VIDEO)
    with fakes.bot_process("first.log") as first:
        await fakes.wait_ready(first, connections=1)
        await fakes.animate()
        await fakes.discord.wait_for(
            lambda: sum(1 for j in fakes.provider.jobs.values() for _ in range(j.polls)) >= 3,
            timeout=30,
        )
        first.kill()
        first.wait()
    with fakes.bot_process("second.log") as second:
        await fakes.wait_ready(second, connections=2)
        await fakes.discord.wait_for(lambda: len(fakes.videos()) == 1, timeout=40)
        [video] = fakes.videos()
        assert video.attachments[0].data == VIDEO
        assert video.mentions_pinged.users == {fakes.user_id}
        assert not video.mentions_pinged.everyone
    assert len(fakes.provider.jobs) == 1
    assert len(fakes.videos()) == 1


async def test_killed_during_submit_the_job_is_submitted_again(fakes: Fakes) -> None:
    fakes.provider.fail_next("POST", delay=20)  # the provider holds the first submit
    with fakes.bot_process("first.log") as first:
        await fakes.wait_ready(first, connections=1)
        await fakes.animate()
        await fakes.discord.wait_for(
            lambda: any(r.method == "POST" for r in fakes.provider.requests), timeout=30
        )
        first.kill()
        first.wait()
    with fakes.bot_process("second.log") as second:
        await fakes.wait_ready(second, connections=2)
        await fakes.discord.wait_for(lambda: len(fakes.videos()) == 1, timeout=40)
    assert len(fakes.videos()) == 1


async def test_killed_while_uploading_the_video_is_not_posted_twice(fakes: Fakes) -> None:
    fakes.provider.script_next_job(["queued", "generating", "generating", "completed"], video=VIDEO)
    with fakes.bot_process("first.log") as first:
        await fakes.wait_ready(first, connections=1)
        await fakes.animate()
        await fakes.discord.wait_for(lambda: bool(fakes.discord.threads()), timeout=30)
        thread_id = fakes.thread_id()
        # Discord stores the upload, but the bot dies before it hears back.
        fakes.discord.hold_next("POST", rf"^/channels/{thread_id}/messages$", seconds=8)
        await fakes.discord.wait_for(lambda: len(fakes.videos()) == 1, timeout=30)
        first.kill()
        first.wait()
    with fakes.bot_process("second.log") as second:
        await fakes.wait_ready(second, connections=2)
        [status] = fakes.bot_messages(fakes.channel_id)
        await fakes.discord.wait_for(
            lambda: "Done" in str(fakes.discord.message(status.id).embeds), timeout=40
        )
    assert len(fakes.videos()) == 1


async def test_sync_command_forces_a_global_sync_and_exits(fakes: Fakes) -> None:
    environment = fakes.environment()
    environment.pop("DEV_GUILD_ID")
    for _ in range(2):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "sync",
            cwd=fakes.tmp,
            env=environment,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, output.decode()
    global_puts = [
        r
        for r in fakes.discord.requests("PUT")
        if r.path == f"/applications/{fakes.discord.application_id}/commands"
    ]
    assert len(global_puts) == 2  # forced both times, unlike a normal start
    assert fakes.discord.identify_payloads == []  # it never connected to the gateway


# --- start-up failures ----------------------------------------------------------------------------


def run_without_fakes(
    tmp_path: Path, *, attempts: int | None = None, **overrides: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "DISCORD_TOKEN": "MTAx.fake.token-that-is-never-sent",
        "AIMLAPI_KEY": "test-key",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        **overrides,
    }
    return subprocess.run(
        bot_command(attempts=attempts),
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_discord_unreachable_is_retried_then_one_line_and_exit_1(tmp_path: Path) -> None:
    with closed_port() as port:
        url = f"http://127.0.0.1:{port}/api/v10"
        result = run_without_fakes(tmp_path, attempts=3, DISCORD_API_BASE_URL=url)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    problem = f"Cannot reach Discord at {url} (connection refused)"
    [*retries, final] = problem_lines(output, problem)
    assert len(retries) == 2 and all(RETRY_LINE in line for line in retries)
    assert "attempt 1 of 3" in retries[0] and "attempt 2 of 3" in retries[1]
    assert "Gave up after 3 attempts" in final and "ERROR" in final
    assert "DISCORD_API_BASE_URL" in final and "network" in final
    assert "Traceback" not in output


def test_dns_failure_names_the_host_and_is_retried(tmp_path: Path) -> None:
    # .invalid never resolves (RFC 6761); the lookup fails without any connection being made.
    url = "https://discord-api.nonexistent.invalid/api/v10"
    result = run_without_fakes(tmp_path, attempts=2, DISCORD_API_BASE_URL=url)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = problem_lines(output, "Cannot look up the address of discord-api.nonexistent.invalid")
    assert len(lines) == 2, output
    assert RETRY_LINE in lines[0] and "Gave up after 2 attempts" in lines[1]
    assert "DISCORD_API_BASE_URL" in lines[1]
    assert "Traceback" not in output


async def test_wrong_token_is_one_line_and_exit_2_without_retrying(fakes: Fakes) -> None:
    code, output = await fakes.run_to_exit(
        "token.log", attempts=5, DISCORD_TOKEN="MTAx.wrong.token-value"
    )
    assert code == 2, output
    [line] = problem_lines(output, "Discord rejected DISCORD_TOKEN")
    assert "ERROR" in line
    assert RETRY_LINE not in output
    assert "wrong.token-value" not in output


async def test_database_unreachable_is_retried_with_the_password_masked(fakes: Fakes) -> None:
    with closed_port() as port:
        code, output = await fakes.run_to_exit(
            "database.log",
            attempts=2,
            DATABASE_URL=f"postgres://animate:hunter2-secret@127.0.0.1:{port}/animate",
        )
    assert code == 1, output
    masked = f"postgresql+asyncpg://animate:***@127.0.0.1:{port}/animate"
    lines = problem_lines(output, f"Cannot reach the database at {masked} (connection refused)")
    assert len(lines) == 2, output
    assert RETRY_LINE in lines[0] and "Gave up after 2 attempts" in lines[1]
    assert "hunter2-secret" not in output
    assert fakes.discord.identify_payloads == []  # it never went on line without its database


@contextmanager
def role_with_password(server: PostgresServer, password: str) -> Iterator[str]:
    """A role that must give its password (the test server trusts everyone else)."""
    role = f"pw_{uuid.uuid4().hex[:12]}"
    psql = str(server.bindir / "psql")
    admin = [psql, "-h", "127.0.0.1", "-p", str(server.port), "-U", SUPERUSER, "-d", "test"]
    hba = server.data / "pg_hba.conf"
    original = hba.read_text()
    subprocess.run([*admin, "-c", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"], check=True)
    try:
        # The first matching line wins, so this one goes on top; a reload applies it.
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
        subprocess.run([*admin, "-c", "SELECT pg_reload_conf()"], check=True, capture_output=True)
        yield role
    finally:
        hba.write_text(original)
        subprocess.run([*admin, "-c", "SELECT pg_reload_conf()"], check=True, capture_output=True)
        subprocess.run([*admin, "-c", f"DROP ROLE {role}"], check=True, capture_output=True)


async def wait_until_password_required(server: PostgresServer, role: str) -> None:
    """pg_reload_conf only signals the server; wait until a wrong password is really refused."""
    import asyncpg

    for _ in range(100):
        try:
            connection = await asyncpg.connect(
                host="127.0.0.1", port=server.port, user=role, password="probe", database="test"
            )
        except asyncpg.InvalidPasswordError:
            return
        await connection.close()
        await asyncio.sleep(0.05)
    raise AssertionError("the server never started asking for the password")


async def test_database_refusing_the_password_is_one_line_and_exit_2(
    fakes: Fakes, postgres_server: PostgresServer
) -> None:
    with role_with_password(postgres_server, "right-password") as role:
        await wait_until_password_required(postgres_server, role)
        url = f"postgres://{role}:wrong-password@127.0.0.1:{postgres_server.port}/test"
        code, output = await fakes.run_to_exit("login.log", attempts=5, DATABASE_URL=url)
    assert code == 2, output
    [line] = problem_lines(output, "refused the login: wrong password")
    assert f"postgresql+asyncpg://{role}:***@127.0.0.1:{postgres_server.port}/test" in line
    assert RETRY_LINE not in output
    assert "wrong-password" not in output and "right-password" not in output


async def test_database_refusing_an_unknown_user_is_one_line_and_exit_2(
    fakes: Fakes, postgres_server: PostgresServer
) -> None:
    url = f"postgres://nobody_here:pw@127.0.0.1:{postgres_server.port}/test"
    code, output = await fakes.run_to_exit("user.log", attempts=5, DATABASE_URL=url)
    assert code == 2, output
    [line] = problem_lines(output, "refused the login for user 'nobody_here'")
    assert re.search(r"nobody_here:\*\*\*@", line)
    assert RETRY_LINE not in output


async def test_an_sqlite_file_that_cannot_be_created_is_one_line_and_exit_2(fakes: Fakes) -> None:
    # /proc accepts no new folders, whoever runs the tests.
    code, output = await fakes.run_to_exit(
        "sqlite.log", attempts=5, DATABASE_URL="sqlite:////proc/animate-bot/jobs.db"
    )
    assert code == 2, output
    [line] = problem_lines(output, "Cannot open the SQLite database")
    assert "/proc/animate-bot/jobs.db" in line and "DATABASE_URL" in line
    assert RETRY_LINE not in output


async def test_gateway_unreachable_is_one_line_not_a_crash(fakes: Fakes) -> None:
    # One attempt: the retry loop is the one proven above. (Each failed start here also waits
    # for cogs/animate.py's unload, which gives a never-started background loop 10 s.)
    with closed_port() as port:
        gateway = f"ws://127.0.0.1:{port}/"
        code, output = await fakes.run_to_exit(
            "gateway.log", attempts=1, DISCORD_GATEWAY_URL=gateway
        )
    assert code == 1, output
    problem = f"Cannot reach the Discord gateway at {gateway} (connection refused)"
    theirs, ours = problem_lines(output, problem + ". Check the network connection, or DISCORD_")
    assert "Attempting a reconnect" in theirs  # discord.py's own retry, now one line
    assert "Gave up after 1 attempt." in ours and "DISCORD_GATEWAY_URL" in ours
    assert "Traceback" not in output and "AttributeError" not in output
