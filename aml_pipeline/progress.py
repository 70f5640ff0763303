"""Progress and summaries on the terminal (stderr for progress, stdout for results).

Long work shows a spinner with elapsed time, or a bar when the amount of work is known.
Both disappear when output is not a terminal, so logs and tests stay clean.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

err = Console(stderr=True)
out = Console(highlight=False)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with elapsed time while a step of unknown length runs; logs the time taken."""
    start = time.perf_counter()
    if err.is_terminal:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True) as p:
            p.add_task(message, total=None)
            yield
    else:
        yield
    err.print(f"[dim]{message}: {time.perf_counter() - start:.1f}s[/dim]") if err.is_terminal else None


@contextlib.contextmanager
def steps(message: str, total: int) -> Iterator[callable]:
    """A progress bar over ``total`` known steps; yields ``advance(n=1)``."""
    if not err.is_terminal:
        yield lambda n=1: None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as p:
        task = p.add_task(message, total=total)
        yield lambda n=1: p.advance(task, n)


def table(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a two-column summary table to stdout."""
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


def fail(message: str, code: int = 2) -> None:
    """Print a user error as one line on stderr and exit non-zero."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
