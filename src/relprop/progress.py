"""Progress lines of long commands: ``relprop sanity: step 3/22: … (1 min 04 s elapsed)`` on stderr.

One line per step, written when the step starts, so that a log file shows what is running now; no
terminal control characters, so the lines stay readable when stderr is not a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 04 s`` or ``2 h 05 min``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Numbered steps of a task of ``total`` steps, each announced with the time since the start."""

    def __init__(self, task: str, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.task, self.total, self.enabled = task, total, enabled
        self.stream = stream
        self.done = 0
        self.started = time.perf_counter()

    def step(self, what: str) -> None:
        """Announce the next step, ``what`` it computes."""
        self.done += 1
        self.note(f"step {self.done}/{self.total}: {what}")

    def note(self, text: str) -> None:
        """One line about the task (not a step), with the elapsed time."""
        if self.enabled:
            elapsed = format_duration(time.perf_counter() - self.started)
            print(f"relprop {self.task}: {text} ({elapsed} elapsed)", file=self.stream or sys.stderr, flush=True)
