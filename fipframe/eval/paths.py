"""Paths between networks: loss and accuracy along a path, barriers, and the curve baselines.

A path is a function ``t -> point`` on ``[0, 1]``. :func:`linear` is the straight segment;
:class:`Curve` is a quadratic Bezier curve or a polygonal chain with one bend (Garipov et al.
2018, "Loss Surfaces, Mode Connectivity, and Fast Ensembling of DNNs"), whose middle point is
trained by :func:`train_curve`; :func:`through` runs piecewise-linearly through a list of points
(a FIP's saved points), parametrised by Euclidean length.

:func:`evaluate_path` measures loss and accuracy at every point of a grid, with the BatchNorm
statistics recomputed at each point from training batches (``run.bn_batches`` of them): a point
of a path never had statistics of its own, and with the end points' statistics the error of a
curve's middle is meaningless. :func:`barrier` is the height of a path above its ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fipframe.core.params import Params, norm, sub_tree
from fipframe.errors import ConfigError

PathFn = Callable[[float], Params]


def _same(a: Params, b: Params, what: str) -> None:
    """``a`` and ``b`` must be points of one architecture: the same names (in any order) and
    shapes."""
    diff = sorted(set(a) ^ set(b)) + [n for n in a if n in b and a[n].shape != b[n].shape]
    if diff:
        raise ConfigError(
            f"{what}: the end points are not points of one architecture (they differ in "
            f"{', '.join(diff[:4])}{' ...' if len(diff) > 4 else ''})"
        )


def _placed(p: Params, like: Tensor) -> Params:
    """``p`` on the device (and floating dtype) of the module's weights."""
    return {
        n: v.to(like.device, like.dtype if v.is_floating_point() else None) for n, v in p.items()
    }


def linear(a: Params, b: Params) -> PathFn:
    """The straight segment ``(1 - t) a + t b``."""
    _same(a, b, "linear")
    return lambda t: {n: torch.lerp(a[n], b[n].to(a[n]), float(t)) for n in a}


def through(points: Sequence[Params]) -> PathFn:
    """Piecewise-linear through ``points``, ``t`` proportional to the Euclidean length."""
    if len(points) < 2:
        raise ConfigError(f"through: a path needs at least 2 points, got {len(points)}")
    for p in points[1:]:
        _same(points[0], p, "through")
    cum = [0.0]
    for p, q in zip(points[:-1], points[1:], strict=True):
        cum.append(cum[-1] + float(norm(sub_tree(q, p))))
    total = cum[-1] or 1.0
    knots = [c / total for c in cum]

    def at(t: float) -> Params:
        t = min(max(float(t), 0.0), 1.0)
        i = max(j for j in range(len(knots) - 1) if knots[j] <= t) if t < 1 else len(knots) - 2
        span = knots[i + 1] - knots[i]
        u = (t - knots[i]) / span if span > 0 else 0.0
        return {
            n: torch.lerp(points[i][n], points[i + 1][n].to(points[i][n]), u) for n in points[0]
        }

    at.knots = knots  # type: ignore[attr-defined]
    return at


@dataclass
class Curve:
    """A curve from ``a`` to ``b`` bent by one trainable point ``theta``.

    ``bezier``: ``(1-t)^2 a + 2t(1-t) theta + t^2 b``; ``polychain``: ``a -> theta -> b`` with the
    bend at ``t = 1/2``."""

    kind: Literal["bezier", "polychain"]
    a: Params
    theta: Params
    b: Params

    def __post_init__(self) -> None:
        if self.kind not in ("bezier", "polychain"):
            raise ConfigError(f"curve kind: expected bezier or polychain, got {self.kind!r}")
        _same(self.a, self.b, self.kind)
        _same(self.a, self.theta, self.kind)

    def __call__(self, t: float | Tensor) -> Params:
        a, th, b = self.a, self.theta, self.b
        if self.kind == "bezier":
            c0, c1, c2 = (1 - t) ** 2, 2 * t * (1 - t), t**2
            return {n: c0 * a[n] + c1 * th[n] + c2 * b[n] for n in a}
        if float(t) <= 0.5:
            u = 2 * t
            return {n: (1 - u) * a[n] + u * th[n] for n in a}
        u = 2 * t - 1
        return {n: (1 - u) * th[n] + u * b[n] for n in a}


def train_curve(
    kind: Literal["bezier", "polychain"],
    a: Params,
    b: Params,
    adapter: Any,
    tasks: Any,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    task: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> Curve:
    """Train the bend of a curve between fixed ends, Garipov et al.'s way: every step draws
    ``t ~ U(0, 1)`` and takes an Adam step on ``theta`` for the cross-entropy of a training batch
    at the curve's point ``t`` (the module in train mode, BatchNorm on batch statistics).
    ``theta`` starts at the midpoint. One step costs one forward and backward of the batch."""
    if steps < 1:
        raise ConfigError(f"train_curve: steps must be >= 1, got {steps}")
    like = next(iter(adapter.model.parameters()))
    a, b = _placed(a, like), _placed(b, like)
    _same(a, b, kind)
    theta = {n: ((a[n] + b[n]) / 2).detach().clone().requires_grad_(True) for n in a}
    curve = Curve(kind, a, theta, b)
    opt = torch.optim.Adam(list(theta.values()), lr=lr)
    g = torch.Generator().manual_seed(seed)
    split = tasks.tasks[task].train
    table = tasks.class_table()
    was = adapter.model.training
    saved = {n: v.detach().clone() for n, v in adapter.model.named_buffers()}
    adapter.train(True)
    try:
        for step in range(steps):
            idx = torch.randint(len(split), (batch_size,), generator=g)
            t = float(torch.rand((), generator=g))
            logits = tasks.restrict(adapter.forward(curve(t), split.gather(idx)), task, table)
            loss = F.cross_entropy(logits, split.y[idx.to(split.y.device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1, float(loss.detach()))
    finally:
        adapter.train(was)
        with torch.no_grad():  # its train-mode forwards moved the module's running statistics
            for n, v in adapter.model.named_buffers():
                v.copy_(saved[n])
    curve.theta = {n: v.detach() for n, v in theta.items()}
    return curve


def grid(n: int) -> list[float]:
    """``n`` evenly spaced points of ``[0, 1]``, both ends included."""
    if n < 2:
        raise ConfigError(f"path grid: at least 2 points (both ends), got {n}")
    return [i / (n - 1) for i in range(n)]


def evaluate_path(
    evaluator: Any,
    path: PathFn,
    ts: Sequence[float] | int = 11,
    *,
    split: Literal["val", "test", "train"] = "test",
    batch_size: int = 128,
    task: int | None = None,
) -> list[dict[str, float]]:
    """Loss and accuracy (pooled over every task's ``split``, class-incremental) at each ``t``.

    BatchNorm statistics are recomputed at each point (``evaluator.recompute_batchnorm``: the
    run's ``bn_batches`` training batches of ``task``, task 0 by default); the module's own
    statistics are put back afterwards. Rows: ``{"t", "loss", "acc", "error"}``."""
    ts = grid(ts) if isinstance(ts, int) else list(ts)
    if evaluator.batchnorm and not evaluator.settings.bn_batches:
        raise ConfigError(
            "evaluate_path: the model has BatchNorm but run.bn_batches is 0; the statistics of "
            "each point must be recomputed (set run.bn_batches > 0)"
        )
    tasks = evaluator.tasks
    table = tasks.class_table()
    like = next(iter(evaluator.adapter.model.parameters()))
    saved, stale = evaluator.buffers(), evaluator.bn_stale
    rows = []
    try:
        for t in ts:
            p = _placed(path(t), like)
            evaluator.recompute_batchnorm(p, task, batch_size)
            losses, hits, count = [], 0.0, 0
            for i, tk in enumerate(tasks.tasks):
                data = getattr(tk, split)
                if len(data) == 0:
                    continue
                logits = tasks.restrict(evaluator.split_logits(p, data), i, table)
                y = data.y
                losses.append(F.cross_entropy(logits.float(), y, reduction="sum"))
                hits += float((logits.argmax(-1) == y).sum())
                count += len(data)
            loss = float(torch.stack(losses).sum()) / max(count, 1)
            acc = hits / max(count, 1)
            rows.append({"t": float(t), "loss": loss, "acc": acc, "error": 1.0 - acc})
    finally:
        evaluator.load_buffers(saved)
        evaluator.bn_stale = stale
    return rows


def barrier(rows: Sequence[dict[str, float]], key: str = "loss") -> float:
    """The height of a path above its ends: ``max_t v(t) - (v(0) + v(1)) / 2`` of ``key`` (a
    quantity where higher is worse: loss or error). The first and last rows are the ends: give
    a grid that includes ``t = 0`` and ``t = 1``."""
    if rows and (rows[0].get("t", 0.0) != 0.0 or rows[-1].get("t", 1.0) != 1.0):
        raise ConfigError(
            f"barrier: the rows run from t = {rows[0]['t']} to t = {rows[-1]['t']}; the ends "
            "(t = 0 and t = 1) must be among them"
        )
    values = [r[key] for r in rows]
    if len(values) < 2 or any(not math.isfinite(v) for v in values):
        return float("nan")
    return max(values) - (values[0] + values[-1]) / 2


def plot_paths(
    curves: dict[str, Sequence[dict[str, float]]], path: str | Path, title: str = ""
) -> list[Path]:
    """Test error and loss along each path type, all on one pair of axes; PNG (200 dpi) and
    SVG. ``curves``: label -> rows of :func:`evaluate_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_e, ax_l) = plt.subplots(1, 2, figsize=(9, 3.4))
    for label, rows in curves.items():
        ts = [r["t"] for r in rows]
        b = barrier(rows, "error")
        ax_e.plot(
            ts, [100 * r["error"] for r in rows], marker=".", label=f"{label} ({100 * b:+.1f})"
        )
        ax_l.plot(ts, [r["loss"] for r in rows], marker=".", label=label)
    ax_e.set_ylabel("test error (%)")
    ax_l.set_ylabel("test loss")
    for ax in (ax_e, ax_l):
        ax.set_xlabel("t along the path (0: network A, 1: network B)")
        ax.grid(alpha=0.3)
    ax_e.legend(title="path (error barrier, pts)", fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    written = []
    for suffix in (".png", ".svg"):
        target = out.with_suffix(suffix)
        fig.savefig(target, dpi=200)
        written.append(target)
    plt.close(fig)
    return written
