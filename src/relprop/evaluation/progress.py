"""Progress of a long run on stderr, readable both on a terminal and in a log file."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

LOG_STEPS = 10
"""Off a terminal, a progress line is printed at every 1/LOG_STEPS of the work."""


class ProgressBar:
    """A tqdm bar on a terminal; elsewhere (a log file, a pipe) one plain line per tenth of the work,
    so that the bar's carriage-return updates never interleave with the messages of :meth:`write`."""

    def __init__(self, total: int, unit: str, desc: str, enabled: bool = True) -> None:
        self.total, self.unit, self.desc, self.done = total, unit, desc, 0
        self.on_terminal = sys.stderr.isatty()
        self.log = enabled and not self.on_terminal and total > 0
        self._bar = tqdm(total=total, unit=unit, desc=desc, disable=not (enabled and self.on_terminal))

    def write(self, message: str, stream: TextIO | None = None) -> None:
        """Print ``message`` on its own line of ``stream`` (default stderr; above the bar on a terminal)."""
        stream = stream or sys.stderr
        if self._bar.disable:
            print(message, file=stream, flush=True)
        else:
            tqdm.write(message, file=stream)

    def update(self, count: int) -> None:
        tenth = self.done * LOG_STEPS // max(1, self.total)
        self.done += count
        self._bar.update(count)
        if self.log and self.done * LOG_STEPS // self.total > tenth:
            print(f"relprop: {self.desc}: {self.done}/{self.total} {self.unit}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()
