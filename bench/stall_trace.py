"""Run `python -m bot` and record what holds its event loop: where each stall happened.

    STALL_TRACE_FILE=stalls.txt python bench/stall_trace.py [bot arguments]

A callback on the loop beats every few milliseconds; a watchdog thread that finds the beat
late by more than STALL_TRACE_SAMPLE_MS (default 20) samples the loop thread's stack until the
loop beats again. Each stall is charged to the stack seen most often during it. The file is
rewritten every few seconds and at exit: stalls over the goal, grouped by stack, longest first.

A stall whose samples show the loop thread idle in its selector was not caused by code on the
loop: the process was waiting for a core (or for the GIL held by another thread, shown too).
bench/load.py runs its bots this way with --trace-stalls.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import gc
import math
import os
import runpy
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

BEAT_SECONDS = 0.005
WATCH_SECONDS = 0.002
WRITE_EVERY_SECONDS = 5.0
GOAL_SECONDS = 0.05
STACK_DEPTH = 14
IDLE_MARKERS = ("selectors.py", "select(", "_run_once")


@dataclass
class Stall:
    started: float
    samples: list[tuple[str, ...]] = field(default_factory=list)
    others: list[tuple[str, ...]] = field(default_factory=list)
    """Stacks of the other threads that were running Python at the same samples."""
    longest: float = 0.0


@dataclass
class Group:
    count: int = 0
    total: float = 0.0
    longest: float = 0.0
    other_threads: collections.Counter[tuple[str, ...]] = field(
        default_factory=collections.Counter
    )


class StallTracer:
    def __init__(self, path: Path, sample_after: float) -> None:
        self.path = path
        self.sample_after = sample_after
        self.last_beat = math.inf  # nothing to watch until the loop runs
        self.loop_thread = threading.get_ident()
        self.stalls: list[tuple[float, tuple[str, ...], list[tuple[str, ...]]]] = []
        self.beats = 0
        self._lock = threading.Lock()
        self.gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # The cyclic collector runs on whichever thread allocates: time it on the loop thread.
        if threading.get_ident() != self.loop_thread:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses[info["generation"]].append(time.perf_counter() - self._gc_started)

    # --- the loop side -------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        def beat() -> None:
            self.last_beat = time.monotonic()
            self.beats += 1
            loop.call_later(BEAT_SECONDS, beat)

        loop.call_soon(beat)

    # --- the watchdog --------------------------------------------------------------------------

    def watch(self) -> None:
        current: Stall | None = None
        next_write = time.monotonic() + WRITE_EVERY_SECONDS
        while True:
            time.sleep(WATCH_SECONDS)
            now = time.monotonic()
            late = now - self.last_beat - BEAT_SECONDS
            if late > self.sample_after:
                if current is None:
                    current = Stall(started=self.last_beat)
                current.longest = late
                frames = sys._current_frames()
                loop_frame = frames.get(self.loop_thread)
                if loop_frame is not None:
                    current.samples.append(_stack(loop_frame))
                for ident, frame in frames.items():
                    if ident not in (self.loop_thread, threading.get_ident()):
                        stack = _stack(frame)
                        if not _idle_thread(stack):
                            current.others.append(stack)
            elif current is not None:
                if current.longest >= GOAL_SECONDS and current.samples:
                    top = collections.Counter(current.samples).most_common(1)[0][0]
                    others = [s for s, _ in collections.Counter(current.others).most_common(2)]
                    with self._lock:
                        self.stalls.append((current.longest, top, others))
                current = None
            if now >= next_write:
                next_write = now + WRITE_EVERY_SECONDS
                self.write()

    def write(self) -> None:
        with self._lock:
            stalls = list(self.stalls)
        groups: dict[tuple[str, ...], Group] = collections.defaultdict(Group)
        for longest, stack, others in stalls:
            group = groups[stack]
            group.count += 1
            group.total += longest
            group.longest = max(group.longest, longest)
            group.other_threads.update(others)
        lines = [
            f"stalls over {GOAL_SECONDS * 1000:.0f} ms: {len(stalls)}, "
            f"longest {max((s[0] for s in stalls), default=0) * 1000:.0f} ms "
            f"(loop beats {self.beats})",
            "",
        ]
        ranked = sorted(groups.items(), key=lambda item: item[1].total, reverse=True)
        for stack, group in ranked:
            idle = " [loop thread idle in its selector: waiting for a core or the GIL]"
            lines.append(
                f"== {group.count} stalls, longest {group.longest * 1000:.0f} ms, "
                f"total {group.total * 1000:.0f} ms"
                + (idle if _idle_loop(stack) else "")
            )
            lines.extend("    " + frame for frame in stack)
            ours = [frame for frame in stack if frame.split(":")[0] in _PROJECT_FILES]
            if ours:
                lines.append(f"  innermost project frame: {ours[-1]}")
            for other, seen in group.other_threads.most_common(2):
                lines.append(f"  other thread running Python ({seen}x):")
                lines.extend("      " + frame for frame in other[-6:])
            lines.append("")
        for generation, pauses in self.gc_pauses.items():
            over = sum(1 for pause in pauses if pause >= GOAL_SECONDS)
            lines.append(
                f"gc generation {generation} on the loop thread: {len(pauses)} collections, "
                f"longest {max(pauses, default=0) * 1000:.0f} ms, "
                f"total {sum(pauses) * 1000:.0f} ms, {over} over the goal"
            )
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, self.path)


_PROJECT_FILES = {
    path.name
    for folder in ("bot", "cogs")
    for path in (Path(__file__).resolve().parents[1] / folder).glob("*.py")
}


def _stack(frame: FrameType) -> tuple[str, ...]:
    summary = traceback.extract_stack(frame)[-STACK_DEPTH:]
    return tuple(f"{Path(f.filename).name}:{f.lineno} {f.name}: {f.line or ''}" for f in summary)


def _idle_loop(stack: tuple[str, ...]) -> bool:
    return bool(stack) and stack[-1].startswith("selectors.py")


def _idle_thread(stack: tuple[str, ...]) -> bool:
    # Worker threads waiting for work, or in a blocking call that releases the GIL.
    last = stack[-1] if stack else ""
    return any(word in last for word in ("wait", "get(", "sleep", "select", "recv", "read("))


class _TracingPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, tracer: StallTracer) -> None:
        super().__init__()
        self._tracer = tracer

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        self._tracer.attach(loop)
        return loop


def main() -> None:
    path = Path(os.environ.get("STALL_TRACE_FILE", "stalls.txt"))
    sample_after = float(os.environ.get("STALL_TRACE_SAMPLE_MS", "20")) / 1000
    tracer = StallTracer(path, sample_after)
    asyncio.set_event_loop_policy(_TracingPolicy(tracer))
    threading.Thread(target=tracer.watch, name="stall-watchdog", daemon=True).start()
    atexit.register(tracer.write)
    sys.argv = ["bot", *sys.argv[1:]]
    runpy.run_module("bot", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
