"""`python -m bot` as a separate process, configured only by environment, against both fakes.

These are the restart-safety tests: the process is killed (SIGKILL, no clean-up) while a job is
being submitted, polled or uploaded, then started again. Every job must still end with exactly
one video in its thread.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.fake_discord import FakeDiscord, FakeMessage
from tests.fake_provider import FakeProvider

REPO = Path(__file__).resolve().parents[1]
VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 32


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
