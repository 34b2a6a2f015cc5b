"""The core package must not depend on Discord: only the launcher and cogs may import it."""

from __future__ import annotations

import subprocess
import sys

CORE_MODULES = [
    "bot.config",
    "bot.errors",
    "bot.catalog",
    "bot.jobs",
    "bot.imaging",
    "bot.provider",
    "bot.store",
    "bot.service",
    "bot.i18n",
]


def test_core_modules_import_without_discord() -> None:
    code = (
        "import sys, importlib\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'discord' or m.startswith('discord.'))\n"
        "print(','.join(leaked))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "", f"discord imported by the core: {result.stdout}"
