"""bench/load.py's priority settings: the fakes (remote services in production) can be run
below the bots, and it is the whole process, every thread, that moves."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice")


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def threads_of(pid: int) -> list[int]:
    return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]


def test_renice_moves_every_thread_of_a_process() -> None:
    bench = load_bench()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, threading\n"
            "threading.Thread(target=sys.stdin.read, daemon=True).start()\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        bench.renice(child.pid, 7)
        tids = threads_of(child.pid)
        assert len(tids) >= 2
        assert [os.getpriority(os.PRIO_PROCESS, tid) for tid in tids] == [7] * len(tids)
    finally:
        child.kill()
        child.wait()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_renice_postgres_moves_the_server_and_its_processes(
    postgres_server: PostgresServer,
) -> None:
    bench = load_bench()
    # A throwaway server of its own: the shared one must keep its priority for other tests.
    server = PostgresServer(postgres_server.bindir)
    server.start()
    try:
        bench.renice_postgres(server.data, 5)
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        # Its checkpointer, WAL writer, ... exist already; later backends inherit the value.
        children = children_of(postmaster)
        assert children
        for pid in [postmaster, *children]:
            assert os.getpriority(os.PRIO_PROCESS, pid) == 5
    finally:
        server.stop()
