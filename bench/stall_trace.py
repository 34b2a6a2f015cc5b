"""Run `python -m bot` and record what holds its event loop: where each stall happened.

    STALL_TRACE_FILE=stalls.txt python bench/stall_trace.py [bot arguments]

A callback on the loop beats every few milliseconds; a watchdog thread that finds the beat
late by more than STALL_TRACE_SAMPLE_MS (default 20) samples the loop thread's stack until the
loop beats again. Each stall is charged to the stack seen most often during it. The file is
rewritten every few seconds and at exit: stalls over the goal, grouped by stack, longest first.

A stall whose samples show the loop thread idle in its selector was not caused by code on the
loop: the process was waiting for a core (or for the GIL held by another thread, shown too).
bench/load.py runs its bots this way with --trace-stalls.

With STALL_TRACE_GC_CENSUS=SECONDS the watchdog also counts, that often, the objects a full
garbage-collection pass would walk (everything tracked and not frozen), by type; containers
(dict, list, tuple, cell, ...) are also counted by the type of an object that refers to them.
The largest census is written to the file. Taking one holds the GIL (~0.1 s per 500,000
objects), so stall figures of such a run are not comparable to a plain one.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import gc
import linecache
import math
import os
import runpy
import sys
import threading
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

BEAT_SECONDS = 0.005
WATCH_SECONDS = 0.002
WRITE_EVERY_SECONDS = 5.0
GOAL_SECONDS = 0.05
STACK_DEPTH = 14
IDLE_MARKERS = ("selectors.py", "select(", "_run_once")
CENSUS_TOP = 60
GC_SLOWEST_KEPT = 6
CENSUS_LARGEST = 12
_CELL = type((lambda value: lambda: value)(0).__closure__[0])  # type: ignore[index]
_CONTAINERS = (dict, list, tuple, set, frozenset, _CELL, collections.deque)


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
    other_threads: collections.Counter[tuple[str, ...]] = field(default_factory=collections.Counter)


class StallTracer:
    def __init__(self, path: Path, sample_after: float, census_every: float | None) -> None:
        self.path = path
        self.sample_after = sample_after
        self.census_every = census_every
        self.census: collections.Counter[str] = collections.Counter()
        self.census_references: collections.Counter[str] = collections.Counter()
        self.census_largest: list[tuple[int, str, str]] = []
        self.census_generations: list[int] = []
        self.last_beat = math.inf  # nothing to watch until the loop runs
        self.loop_thread = threading.get_ident()
        self.stalls: list[tuple[float, tuple[str, ...], list[tuple[str, ...]]]] = []
        self.beats = 0
        self._lock = threading.Lock()
        self.gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.gc_slowest: dict[int, list[tuple[float, float, int, float]]] = {0: [], 1: [], 2: []}
        """Per generation, the slowest passes: (wall s, the loop thread's CPU s, collected,
        seconds since the tracer started: a pass during start-up is not one under load)."""
        self._started = time.perf_counter()
        self._gc_started = 0.0
        self._gc_cpu_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # The cyclic collector runs on whichever thread allocates: time it on the loop thread.
        if threading.get_ident() != self.loop_thread:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
            self._gc_cpu_started = time.thread_time()
        else:
            # Wall time well above CPU time: the thread waited for a core during the pass.
            wall = time.perf_counter() - self._gc_started
            cpu = time.thread_time() - self._gc_cpu_started
            self.gc_pauses[info["generation"]].append(wall)
            slowest = self.gc_slowest[info["generation"]]
            slowest.append((wall, cpu, info["collected"], self._gc_started - self._started))
            slowest.sort(reverse=True)
            del slowest[GC_SLOWEST_KEPT:]

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
        next_census = time.monotonic() + (self.census_every or math.inf)
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
            if now >= next_census and current is None:
                next_census = now + (self.census_every or math.inf)
                self.take_census()

    def take_census(self) -> None:
        """Count what a full collection walks now; keep the largest census seen."""
        generations = [len(gc.get_objects(generation)) for generation in range(3)]
        if sum(generations) <= sum(self.census_generations):
            return
        objects = gc.get_objects()
        owners: dict[int, str] = {}
        for obj in objects:
            if isinstance(obj, _CONTAINERS):
                continue
            owner = _type_name(obj)
            for referent in gc.get_referents(obj):
                if isinstance(referent, _CONTAINERS):
                    owners.setdefault(id(referent), owner)
        census: collections.Counter[str] = collections.Counter()
        references: collections.Counter[str] = collections.Counter()
        largest: list[tuple[int, str, str]] = []
        for obj in objects:
            name = _census_name(obj)
            if isinstance(obj, _CONTAINERS):
                name += " <- " + owners.get(id(obj), "?")
            census[name] += 1
            # A collection visits every reference of every object it walks.
            referents = gc.get_referents(obj)
            references[name] += len(referents)
            if len(referents) >= 1000:
                kinds = collections.Counter(_type_name(item) for item in referents)
                sample = ", ".join(f"{kind} x{n}" for kind, n in kinds.most_common(3))
                largest.append((len(referents), name, sample + "; " + repr(obj)[:160]))
        del objects, owners
        largest.sort(reverse=True)
        with self._lock:
            self.census = census
            self.census_references = references
            self.census_largest = largest[:CENSUS_LARGEST]
            self.census_generations = generations

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
                f"total {group.total * 1000:.0f} ms" + (idle if _idle_loop(stack) else "")
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
        with self._lock:
            census, generations = self.census, self.census_generations
            references = self.census_references
            largest = self.census_largest
        for generation, slowest in self.gc_slowest.items():
            passes = ", ".join(
                f"{wall * 1000:.0f} ms ({cpu * 1000:.0f} ms CPU, {collected} collected, "
                f"at {at:.0f} s)"
                for wall, cpu, collected, at in slowest
            )
            lines.append(f"slowest generation {generation} passes: {passes}")
        if census:
            lines.append("")
            lines.append(
                f"largest census: {sum(generations)} objects a full collection walks "
                f"(generations 0/1/2: {'/'.join(map(str, generations))}), "
                f"{gc.get_freeze_count()} frozen; by type (container <- a referrer):"
            )
            for name, count in census.most_common(CENSUS_TOP):
                lines.append(f"  {count:8d}  {name}")
            cached = list(linecache.cache.values())
            lines.append(
                f"linecache (source lines kept by tracebacks and warnings): {len(cached)} files, "
                f"{sum(len(entry[2]) for entry in cached if len(entry) > 2)} lines"
            )
            lines.append("")
            lines.append(
                f"references those objects hold ({sum(references.values())} in all), by type:"
            )
            for name, count in references.most_common(CENSUS_TOP // 2):
                lines.append(f"  {count:8d}  {name}")
            lines.append("")
            lines.append("objects holding the most references:")
            for count, name, sample in largest:
                lines.append(f"  {count:8d}  {name}: {sample}")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, self.path)


_PROJECT_FILES = {
    path.name
    for folder in ("bot", "cogs")
    for path in (Path(__file__).resolve().parents[1] / folder).glob("*.py")
}


def _stack(frame: FrameType) -> tuple[str, ...]:
    summary = traceback.StackSummary.extract(
        traceback.walk_stack(frame), limit=STACK_DEPTH, lookup_lines=False
    )
    summary.reverse()
    return tuple(
        f"{Path(f.filename).name}:{f.lineno} {f.name}: {_source_line(f.filename, f.lineno)}"
        for f in summary
    )


_sources: dict[str, tuple[str, ...]] = {}


def _source_line(filename: str, lineno: int | None) -> str:
    """The line, from the tracer's own cache: filling `linecache` (lists of every line of
    every module seen) would add ~150,000 references to each full collection of the bot."""
    if filename not in _sources:
        try:
            text = Path(filename).read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        # A tuple of strings: the collector stops tracking it after one pass.
        _sources[filename] = tuple(line.strip() for line in text.splitlines())
    lines = _sources[filename]
    return lines[lineno - 1] if lineno is not None and 0 < lineno <= len(lines) else ""


def _type_name(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _census_name(obj: object) -> str:
    """The type, and for coroutines and tasks the function they run."""
    name = _type_name(obj)
    if isinstance(obj, types.CoroutineType):
        return f"{name} {obj.cr_code.co_qualname}"
    if isinstance(obj, asyncio.Task):
        coro = obj.get_coro()
        code = getattr(coro, "cr_code", None)
        return f"{name} {code.co_qualname if code is not None else '?'}"
    return name


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
    census = os.environ.get("STALL_TRACE_GC_CENSUS")
    tracer = StallTracer(path, sample_after, float(census) if census else None)
    asyncio.set_event_loop_policy(_TracingPolicy(tracer))
    threading.Thread(target=tracer.watch, name="stall-watchdog", daemon=True).start()
    atexit.register(tracer.write)
    sys.argv = ["bot", *sys.argv[1:]]
    runpy.run_module("bot", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
