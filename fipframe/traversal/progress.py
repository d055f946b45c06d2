"""What a person watching a run sees: a progress bar on a terminal, periodic lines otherwise.

``run.progress`` chooses: ``bar`` (tqdm), ``lines`` (a line on stderr at most every 10 s and at
every stage end), ``off``, or ``auto`` (a bar when stderr is a terminal, lines otherwise).
Each stage is labelled with its place in the run (``fip/learn-5-9 [branch 3 of 3]``) and each
update carries the whole run's share done and its ETA, from the steps this process has run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LINE_SECONDS = 10.0


class Progress:
    """``prefix`` goes before every line and bar (which run, when several walk together)."""

    def __init__(self, mode: str, prefix: str = ""):
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode
        self.prefix = prefix
        self._last_line = 0.0
        self._total = 0
        self._done: dict[tuple[str, str], int] = {}
        self._branches: list[str] = []
        self._clock: tuple[float, int] | None = None  # (time, steps done) when this process began

    def plan(self, stages: list[tuple[str, list[Any]]]) -> None:
        """The run's stages in order, ``[(branch, [stage configs])]``, trunk first."""
        self._total = sum(int(s.steps) for _, ss in stages for s in ss)
        self._branches = [b for b, _ in stages if b != "trunk"]

    def skip(self, branch: str, stages: list[Any]) -> None:
        """Stages finished before a resume: done, but not part of this process's rate."""
        for s in stages:
            before = self._done.get((branch, s.name), 0)
            self._done[(branch, s.name)] = int(s.steps)
            if self._clock is not None:  # shift the baseline: these steps took no time here
                self._clock = (self._clock[0], self._clock[1] + int(s.steps) - before)

    def label(self, branch: str, stage: str) -> str:
        if branch in self._branches:
            where = f"branch {self._branches.index(branch) + 1} of {len(self._branches)}"
        else:
            where = "shared stages"
        return f"{branch}/{stage} [{where}]"

    def advance(self, branch: str, stage: str, step: int) -> str:
        """Record that ``branch/stage`` is at ``step``; the run's share done and ETA, as text."""
        self._done[(branch, stage)] = step
        done = sum(self._done.values())
        now = time.monotonic()
        if self._clock is None:
            self._clock = (now, done)
            return ""
        if not self._total:
            return ""
        t0, d0 = self._clock
        share = f"run {100 * done / self._total:.0f}%"
        if done > d0 and now > t0:
            left = (self._total - done) * (now - t0) / (done - d0)
            return f"{share}, ETA {_duration(left)}"
        return share

    @contextmanager
    def bar(self, label: str, total: int, start: int) -> Iterator[Any]:
        """A bar over a stage's steps (or a stand-in with the same methods)."""
        if self.mode == "bar":
            from tqdm import tqdm

            with tqdm(
                total=total,
                initial=start,
                desc=self.prefix + label,
                leave=False,
                dynamic_ncols=True,
            ) as bar:
                yield bar
        else:
            yield _NoBar(start)

    def line(self, text: str) -> None:
        if self.mode != "off":
            print(self.prefix + text, file=sys.stderr, flush=True)

    def chunk(self, label: str, step: int, steps: int, text: str) -> None:
        """A periodic line (``lines`` mode only, at most every :data:`LINE_SECONDS`)."""
        now = time.monotonic()
        if self.mode == "lines" and now - self._last_line >= LINE_SECONDS:
            self._last_line = now
            self.line(f"{label} step {step}/{steps} {text}")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _NoBar:
    def __init__(self, n: int):
        self.n = n

    def update(self, k: int) -> None:
        self.n += k

    def set_postfix_str(self, s: str) -> None:
        pass


def short(metrics: dict[str, float]) -> str:
    """Loss, divergence and per-task test accuracy in one line."""
    parts = []
    if "loss/total" in metrics and math.isfinite(metrics["loss/total"]):
        parts.append(f"loss {metrics['loss/total']:.3f}")
    if "loss/divergence" in metrics:
        parts.append(f"div {metrics['loss/divergence']:.4f}")
    accs = sorted(k for k in metrics if k.startswith("acc/test/task_"))
    if accs:
        parts.append("test acc " + " ".join(f"{100 * metrics[k]:.1f}" for k in accs))
    return ", ".join(parts)
