"""Results pages that a bench regenerates while keeping the team's hand-written reading, and
the statistics every comparison page uses (mean +- sample std over seeds, lead/tie/loss)."""

from __future__ import annotations

from pathlib import Path

from fipframe.eval.compare import mean_std, outcome  # noqa: F401  (the benches' statistics)


def write_keeping(path: Path, generated: str, heading: str) -> None:
    """Write ``generated`` to ``path``; what ``path`` holds from ``heading`` on survives."""
    kept = ""
    if path.exists() and heading in (old := path.read_text()):
        kept = "\n" + old[old.index(heading) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated.rstrip("\n") + "\n" + kept)
