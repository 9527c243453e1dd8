"""What a run tells the person (or the CI log) watching it: one line as each stage starts and ends, with counts
and seconds, on stderr.

On a terminal the long stages also draw a progress bar; in a captured log (CI) they print a line every
``interval`` seconds instead, so a job that is killed still shows how far it got. ``verbosity`` 0 is silent
(``--quiet``: errors only), 1 the stage lines, 2 adds details (``--verbose``). Timings are recorded either way:
they go into the run's summary.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

PREFIX = "[label-audit]"


@dataclass
class Stage:
    """A running stage: set ``result`` to the text of its closing line."""

    name: str
    started: float = field(default_factory=time.perf_counter)
    result: str = ""

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


class Progress:
    """Stage lines and progress bars for one run; ``timings`` collects every stage's seconds."""

    def __init__(self, verbosity: int = 1, stream: IO[str] | None = None, interval: float = 30.0) -> None:
        self.verbosity = verbosity
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.timings: dict[str, float] = {}
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False

    @classmethod
    def quiet(cls) -> Progress:
        return cls(verbosity=0)

    def line(self, text: str, level: int = 1) -> None:
        """Print one line when the verbosity allows it."""
        if self.verbosity >= level:
            print(f"{PREFIX} {text}", file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str, starting: str | None = None, level: int = 1) -> Iterator[Stage]:
        """Time a stage; print ``name: starting`` first and ``name: <result> (<seconds> s)`` at the end."""
        stage = Stage(name)
        self.line(f"{name}: {starting}" if starting else f"{name} ...", level)
        try:
            yield stage
        except BaseException:
            self.timings[name] = round(stage.seconds, 3)
            self.line(f"{name}: stopped after {stage.seconds:.1f} s", level)
            raise
        self.timings[name] = round(stage.seconds, 3)
        self.line(f"{name}: {stage.result or 'done'} ({stage.seconds:.1f} s)", level)

    def bar(self, total: int, description: str, unit: str = "it") -> Any:
        """A tqdm bar on a terminal; in a captured log, a line every ``interval`` seconds; nothing when quiet."""
        if self.verbosity >= 1 and self.tty:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=description, unit=unit, file=self.stream, leave=False)
        return _PeriodicLines(self, total, description, unit)


class _PeriodicLines:
    """The captured-log stand-in for a progress bar: ``done/total (share), rate, time left`` every interval."""

    def __init__(self, progress: Progress, total: int, description: str, unit: str) -> None:
        self.progress, self.total, self.description, self.unit = progress, total, description, unit
        self.done = 0
        self.started = self.last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.progress.interval and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.progress.line(f"{self.description}: {self.done:,}/{self.total:,} ({self.done / self.total:.0%}), "
                               f"{rate:,.1f} {self.unit}/s, about {_duration(left)} left")

    def close(self) -> None:
        pass

    def __enter__(self) -> _PeriodicLines:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def as_progress(progress: bool | Progress | None) -> Progress:
    """``True``: stage lines on stderr; ``False``/None: silent; a :class:`Progress`: itself."""
    if isinstance(progress, Progress):
        return progress
    return Progress(verbosity=1 if progress else 0)
