"""Path measures: functional drift, geodesic length, and the angle between a gradient and the
metric's top eigenspace.

The engine logs the first two live for every stage with a metric (``path/drift``,
``path/length``, ``path/euclidean``); these functions compute them for any sequence of points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fipframe.core.linalg import hutchinson_trace, lanczos, participation_ratio
from fipframe.core.metric import Metric
from fipframe.core.params import Params, ParamSpace, sub_tree

Forward = Callable[[Params], Tensor]


def segment_length(metric: Metric, forward: Forward, a: Params, b: Params) -> Tensor:
    """``sqrt(d^T g(a) d)`` for ``d = b - a``: the metric length of a short straight segment."""
    d = sub_tree(b, a)
    space = ParamSpace.of(a)
    quad = space.flatten(d) @ space.flatten(metric.mvp(forward, a, d))
    return quad.clamp_min(0).sqrt()


def geodesic_length(metric: Metric, forward: Forward, points: Sequence[Params]) -> Tensor:
    """Length of the piecewise-straight path through ``points`` under the metric.

    Accurate when consecutive points are close (the metric is taken at each segment's start).
    """
    total = torch.zeros(())
    for a, b in zip(points[:-1], points[1:], strict=True):
        total = total + segment_length(metric, forward, a, b).cpu()
    return total


def drift(metric: Metric, forward: Forward, anchor: Params, points: Sequence[Params]) -> Tensor:
    """Mean divergence of each point's outputs from the anchor's on ``forward``'s inputs."""
    with torch.no_grad():
        ref = metric.reference(forward(anchor))
        return torch.stack([metric.divergence(forward(p), ref).mean() for p in points])


def gradient_angle(
    metric: Metric, forward: Forward, params: Params, grad: Params, k: int = 20
) -> Tensor:
    """Fraction of ``||grad||^2`` inside the top-``k`` eigenspace of ``g`` (cos^2 of the angle).

    Near 1: following the gradient changes the function on the stored inputs; near 0: the
    gradient already lies in directions the metric barely sees.
    """
    space = ParamSpace.of(params)
    flat = space.flatten(grad)
    eig = lanczos(metric.operator(forward, params), space.size, min(k, space.size), like=flat)
    return eig.captured(flat)


def spectrum(
    metric: Metric,
    forward: Forward,
    params: Params,
    k: int = 20,
    trace_samples: int = 100,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Top-``k`` eigenvalues of ``g``, the share of its trace they hold, and effective ranks.

    Returns ``values`` (descending), ``trace`` (Hutchinson estimate from ``trace_samples``
    products), ``captured`` (``sum(values) / trace``), ``effective_rank`` (participation ratio
    of the top-k values) and ``rank_bound`` (samples x outputs, the most ``g`` can have).
    """
    space = ParamSpace.of(params)
    like = space.flatten(params)
    op = metric.operator(forward, params)
    eig = lanczos(op, space.size, min(k, space.size), like=like, seed=seed)
    trace = hutchinson_trace(op, space.size, trace_samples, like=like, seed=seed + 1)
    with torch.no_grad():
        out = forward(params)
    return {
        "values": eig.values,
        "trace": trace,
        "captured": eig.values.sum() / trace,
        "effective_rank": participation_ratio(eig.values),
        "rank_bound": torch.tensor(out.numel()),
    }
