"""Progress bars (rich) for long work; silent when `enabled` is False (tests, --json)."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class Bars:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled  # stage log lines
        self.bars = enabled and sys.stderr.isatty()  # live bars only on a terminal
        self._progress = None

    def __enter__(self):
        if self.bars:
            self._progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=console, transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def task(self, description: str, total: int):
        """A callable `advance(n=1, **metrics)`; metrics (e.g. loss) are shown beside the bar."""
        if self._progress is None:
            return self._plain_task(description, total) if self.enabled else None
        tid = self._progress.add_task(description, total=total, info="")
        prog = self._progress

        def advance(n: int = 1, **metrics):
            info = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            prog.update(tid, advance=n, info=info)
        return advance

    def _plain_task(self, description: str, total: int):
        """No terminal (CI, pipes): one line per quarter of the work instead of a live bar."""
        state = {"done": 0, "next": 0.25}

        def advance(n: int = 1, **metrics):
            state["done"] += n
            frac = state["done"] / max(1, total)
            if frac >= state["next"] or state["done"] == total:
                info = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
                console.print(f"  {description}: {state['done']}/{total} {info}", highlight=False)
                while state["next"] <= frac:
                    state["next"] += 0.25
        return advance

    def log(self, message: str) -> None:
        if self.enabled:
            console.print(message, highlight=False)


@contextlib.contextmanager
def maybe_bars(enabled: bool):
    with Bars(enabled) as bars:
        yield bars


class BoardProgress:
    """One rich row per board on a terminal (stderr); without one, plain `board: message` lines — every step,
    or only the final ones ("done"/"failed") when `plain_steps` is False."""

    def __init__(self, enabled: bool, plain_steps: bool = True):
        self.enabled, self.plain_steps = enabled, plain_steps
        self._progress = None
        self._tasks = {}

    def __enter__(self):
        if self.enabled and sys.stderr.isatty():
            self._progress = Progress(TextColumn("{task.fields[board]:<24}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=console, transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, board: str, message: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            if self.plain_steps or message in ("done", "failed"):
                console.print(f"{board}: {message}", highlight=False, markup=False)
            return
        if board not in self._tasks:
            self._tasks[board] = self._progress.add_task(message, total=total, board=board)
        self._progress.update(self._tasks[board], description=message, completed=done, total=total)
