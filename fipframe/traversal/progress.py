"""What a person watching a run sees: a progress bar on a terminal, periodic lines otherwise.

``run.progress`` chooses: ``bar`` (tqdm), ``lines`` (a line on stderr at most every 10 s and at
every stage end), ``off``, or ``auto`` (a bar when stderr is a terminal, lines otherwise).
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
    def __init__(self, mode: str):
        self.mode = ("bar" if sys.stderr.isatty() else "lines") if mode == "auto" else mode
        self._last_line = 0.0

    @contextmanager
    def bar(self, label: str, total: int, start: int) -> Iterator[Any]:
        """A bar over a stage's steps (or a stand-in with the same methods)."""
        if self.mode == "bar":
            from tqdm import tqdm

            with tqdm(
                total=total, initial=start, desc=label, leave=False, dynamic_ncols=True
            ) as bar:
                yield bar
        else:
            yield _NoBar(start)

    def line(self, text: str) -> None:
        if self.mode != "off":
            print(text, file=sys.stderr, flush=True)

    def chunk(self, label: str, step: int, steps: int, text: str) -> None:
        """A periodic line (``lines`` mode only, at most every :data:`LINE_SECONDS`)."""
        now = time.monotonic()
        if self.mode == "lines" and now - self._last_line >= LINE_SECONDS:
            self._last_line = now
            self.line(f"{label} step {step}/{steps} {text}")


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
