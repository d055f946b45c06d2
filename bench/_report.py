"""Results pages that a bench regenerates while keeping the team's hand-written reading, and
the statistics every comparison page uses (mean +- sample std over seeds, lead/tie/loss)."""

from __future__ import annotations

import statistics
from pathlib import Path


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def outcome(a: list[float], b: list[float]) -> str:
    """lead / tie / loss of ``a`` against ``b``: a leads when its mean exceeds b's by more than
    the larger of the two seed standard deviations ("n/a" when either has no runs)."""
    if not a or not b:
        return "n/a"
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    if ma - mb > max(sa, sb):
        return "lead"
    if mb - ma > max(sa, sb):
        return "loss"
    return "tie"


def write_keeping(path: Path, generated: str, heading: str) -> None:
    """Write ``generated`` to ``path``; what ``path`` holds from ``heading`` on survives."""
    kept = ""
    if path.exists() and heading in (old := path.read_text()):
        kept = "\n" + old[old.index(heading) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated.rstrip("\n") + "\n" + kept)
