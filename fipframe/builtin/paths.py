"""Objectives that steer a path through weight space itself: toward a second network, or away
from the networks already sampled (see docs/paths.md).

- ``to_network``: ``1/2 ||w - w*||^2`` to a target point ``w*`` (a point file or a run's end),
  or that divided by the squared distance at the stage start (``scale: relative``). With a
  metric on the stage, the path reaches toward ``w*`` while the invariance term keeps the
  function of its start: a FIP between two networks (arXiv 2106.02793). Reach it with SGD: its
  step on this term shrinks the gap by ``lr x weight`` of itself, where Adam's steps are bounded
  by ``lr`` whatever the gap (a 2-layer CNN's ends lie 8 apart: ``lr x steps`` must exceed that
  per weight).
- ``diversity``: moves away from the members sampled earlier on the path (the end points of
  its finished stages), in weight space (distance, optionally capped at a radius) or in the
  outputs (the cosine similarity of the members' predictions over the classes other than the
  label, or than the stage start's prediction for unlabelled inputs: the quantity ADP's
  ensemble diversity enlarges; Pang et al. 2019), so an ensemble sampled along a FIP is diverse
  in weights while the invariance term keeps each member's function.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fipframe.core.configs import NonNegative, PluginConfig
from fipframe.core.objective import Batch, SecondaryObjective, StageContext
from fipframe.core.params import Params, norm
from fipframe.errors import ConfigError, TraversalError
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


def _sq_dist(a: Params, b: Params, names: Any) -> Tensor:
    out = next(iter(a.values())).new_zeros(())
    for n in names:
        out = out + (a[n] - b[n]).square().sum()
    return out


# -- to_network -----------------------------------------------------------------------------
class ToNetworkConfig(PluginConfig):
    kind: Literal["to_network"] = "to_network"
    target: str = Field(
        min_length=1,
        max_length=4096,
        description="the network to reach: a point file, a run directory or "
        "RUN_DIR#BRANCH[/STAGE] (same parameter names and shapes as the model)",
    )
    weight: NonNegative = Field(1.0, description="weight of this term")
    scale: Literal["absolute", "relative"] = Field(
        "absolute",
        description="absolute: 1/2 ||w - w*||^2, whose gradient w - w* lets SGD close the gap "
        "geometrically (factor 1 - lr x weight per step); relative: divided by the squared "
        "distance at the stage start (weight 1 = the whole gap, for scale-free optimisers)",
    )


class ToNetwork(SecondaryObjective):
    """``1/2 ||w - w*||^2`` (over the traversable weights) to a target network."""

    @classmethod
    def check(cls, config: ToNetworkConfig, adapter: Any, where: str) -> None:
        from fipframe.eval.points import check_like, read_point

        model = adapter.model
        others = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        try:
            point = read_point(config.target)
        except ConfigError as exc:
            raise ConfigError(f"{where}.target: {exc}") from None
        check_like(point, adapter.params(), f"{where}.target", known=others)

    def bind(self, ctx: StageContext) -> None:
        from fipframe.eval.points import read_point

        anchor = ctx.anchor
        device = next(iter(anchor.values())).device
        point = read_point(self.config.target, device)
        self.names = list(anchor)
        weights = point.weights()
        self.target = {n: weights[n].to(device, anchor[n].dtype) for n in self.names}
        gap = float(_sq_dist(anchor, self.target, self.names))
        if self.config.scale == "relative" and gap == 0.0:
            raise TraversalError(
                f"objective to_network: the stage starts at its target {self.config.target} "
                "(distance 0); nothing to reach (use scale: absolute to hold it there)"
            )
        self.norm = gap if self.config.scale == "relative" else 1.0
        self.digest = weights_digest(self.target)

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        return 0.5 * _sq_dist(params, self.target, self.names) / self.norm

    def state_dict(self) -> dict[str, Tensor]:
        return {"target_digest": self.digest}  # the target is pinned by content, not by path

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        old = state.get("target_digest")
        if old is not None and not torch.equal(old.cpu(), self.digest):
            raise ConfigError(
                f"objective to_network: target {self.config.target} is not the network this "
                "run started toward (its weights' sha256 differs from the checkpoint's); put "
                "that file back, or start a new run"
            )


def weights_digest(weights: dict[str, Tensor]) -> Tensor:
    """sha256 of names and raw bytes, in name order, as 32 uint8 (for checkpoints)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).clone()


# -- diversity ------------------------------------------------------------------------------
class DiversityConfig(PluginConfig):
    kind: Literal["diversity"] = "diversity"
    weight: NonNegative = Field(1.0, description="weight of this term")
    space: Literal["weights", "outputs"] = Field(
        "weights",
        description="weights: move away from the members in weight space; outputs: make the "
        "non-label predictions unlike the members' on training inputs (ADP's diversity)",
    )
    radius: float | None = Field(
        None,
        gt=0.0,
        description="weights: stop pushing away from a member once this far from it "
        "(Euclidean); None: push always (-mean distance)",
    )
    members: int = Field(
        0, ge=0, le=10**4, description="the last N members repel (0: every earlier member)"
    )
    exclude: Literal["label", "prediction"] = Field(
        "label",
        description="outputs: the class left out of the comparison: the input's label, or the "
        "stage start's prediction (no labels read: disagreement on unlabelled inputs)",
    )
    pool: int = Field(
        1024,
        ge=1,
        le=10**7,
        description="outputs: training inputs on which the members' predictions are held",
    )


class Diversity(SecondaryObjective):
    """Away from the path's earlier members: its finished stages' end points (the stage's
    start when there are none)."""

    def bind(self, ctx: StageContext) -> None:
        members = [p for _, p in ctx.ends] or [ctx.anchor]
        if self.config.members:
            members = members[-self.config.members :]
        self.names = list(ctx.anchor)
        # each member repels from a point a hair (1e-3 of its norm) off it along a fixed random
        # direction, so a path that starts at a member has a way out (at the member itself the
        # distance has no gradient)
        g = torch.Generator().manual_seed(len(members))
        self.members = []
        for m in members:
            m = {n: m[n] for n in self.names}
            u = {n: torch.randn(v.shape, generator=g).to(v) for n, v in m.items()}
            shift = 1e-3 * norm(m) / norm(u)
            self.members.append({n: v - shift * u[n] for n, v in m.items()})
        if self.config.space == "weights":
            return
        task = ctx.task if ctx.task is not None else ctx.tasks.tasks[0]
        split = task.train
        rows = torch.randperm(len(split), generator=g)[: self.config.pool].to(split.y.device)
        x, y = split.gather(rows), split.y[rows]
        assert ctx.outputs is not None
        if self.config.exclude == "prediction":
            y = ctx.outputs(ctx.anchor, x).argmax(-1)
        self.pool_x, self.pool_y = x, y
        self.member_q = [self._non_label(ctx.outputs(m, x), y) for m in members]
        self.sampler = ctx.sampler("diversity", len(rows), ctx.batch_size)
        self.idx: Tensor | None = None

    @staticmethod
    def _non_label(logits: Tensor, y: Tensor) -> Tensor:
        """Probabilities of the classes other than the label, renormalised, unit length."""
        p = F.softmax(logits.float(), dim=-1)
        p = p.scatter(-1, y.unsqueeze(-1), 0.0)
        return F.normalize(p, dim=-1)

    def sample(self, step: int) -> Batch | None:
        if self.config.space == "weights":
            return None
        from fipframe.data import inputs as I

        self.idx = self.sampler.indices(step)
        return Batch(I.take(self.pool_x, self.idx), self.pool_y[self.idx])

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        if self.config.space == "weights":
            dists = [_sq_dist(params, m, self.names).clamp_min(1e-12).sqrt() for m in self.members]
            r = self.config.radius
            if r is None:
                return -torch.stack(dists).mean()
            return torch.stack([F.relu(r - d) for d in dists]).mean() / r
        assert logits is not None and batch is not None and self.idx is not None
        q = self._non_label(logits, batch.targets)
        sims = [(q * m[self.idx]).sum(-1).mean() for m in self.member_q]
        return torch.stack(sims).mean()


@hookimpl
def fipframe_register_objectives() -> list[Spec]:
    return [
        Spec("to_network", ToNetworkConfig, ToNetwork, "1/2 ||w - w*||^2 to a target network"),
        Spec("diversity", DiversityConfig, Diversity, "away from the path's earlier members"),
    ]
