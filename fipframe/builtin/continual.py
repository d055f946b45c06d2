"""Continual-learning baselines as secondary objectives, so every method runs in one engine.

Each is a loss term listed next to ``task_ce`` in a stage (see the ``continual-*`` presets):

- ``joint_ce``: cross-entropy on every task seen so far, current one included (joint training,
  the upper reference; it reads all earlier training data, which the other methods may not).
- ``ewc``: Elastic Weight Consolidation (Kirkpatrick et al. 2017), the diagonal quadratic
  metric ``sum_t 1/2 (w - w_t)^T diag(F_t) (w - w_t)``. ``F_t`` is the diagonal of the KL
  metric (the Fisher of the model's predictive distribution) at task ``t``'s end point, on
  ``samples`` of its training inputs: exactly (the framework's own metric, read off its
  diagonal) or, by default, by drawing one label per input from the model (unbiased, and a
  tenth of the cost for ten classes).
- ``si``: Synaptic Intelligence (Zenke et al. 2017): per-parameter importance from the path
  integral ``-sum_k g_k * dw_k`` over each stage it is listed in, damped by
  ``(total move)^2 + xi``, then ``sum Omega (w - w_prev)^2``. List it (weight 0 is fine) in every
  stage whose path should count, the first one included.
- ``lwf``: Learning without Forgetting (Li & Hoiem 2017): temperature-softened distillation of
  the stage's first point's outputs on the current task's inputs, over earlier tasks' classes.
- ``der``: the logit-matching term of DER/DER++ (Buzzega et al. 2020): squared error between the
  outputs on stored inputs and the outputs recorded when they were stored. DER++ is
  ``task_ce + der + replay_ce``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fipframe.builtin.objectives import FromMemory
from fipframe.core.configs import NonNegative, PluginConfig
from fipframe.core.objective import Batch, SecondaryObjective, StageContext
from fipframe.core.params import Params
from fipframe.data import inputs as I
from fipframe.data.task import concat
from fipframe.errors import TraversalError
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


def _zero(params: Params) -> Tensor:
    return next(iter(params.values())).new_zeros(())


def _quadratic(params: Params, weight: dict[str, Tensor], centre: dict[str, Tensor]) -> Tensor:
    """``sum_i weight_i (w_i - centre_i)^2``: the penalty of EWC and SI."""
    out = _zero(params)
    for name, w in params.items():
        out = out + (weight[name] * (w - centre[name]).square()).sum()
    return out


def _seen(ctx: StageContext) -> list[int]:
    """Tasks finished earlier on this path, in order, without repeats."""
    return list(dict.fromkeys(t for t, _ in ctx.ends if t is not None))


# -- joint training -------------------------------------------------------------------------
class JointCEConfig(PluginConfig):
    kind: Literal["joint_ce"] = "joint_ce"
    weight: NonNegative = Field(1.0, description="weight of this term")


class JointCE(SecondaryObjective):
    """Cross-entropy on the union of every task seen so far and the stage's task."""

    def bind(self, ctx: StageContext) -> None:
        ids = _seen(ctx)
        if ctx.task_index is not None and ctx.task_index not in ids:
            ids.append(ctx.task_index)
        if not ids:
            raise TraversalError("objective joint_ce needs a stage with `task:` set")
        splits = [ctx.tasks.tasks[i].train for i in ids]
        assert ctx.batches is not None
        self.joined = concat(splits)
        self.t = torch.cat([torch.full_like(s.y, i) for i, s in zip(ids, splits, strict=True)])
        self.tasks, self.table = ctx.tasks, ctx.tasks.class_table()
        self.batches = ctx.batches("joint_ce", self.joined, ctx.batch_size)
        self._ids: Tensor | None = None

    def sample(self, step: int) -> Batch:
        x, y, idx = self.batches.get(step)
        self._ids = self.t[idx]
        return Batch(x, y)

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        assert logits is not None and batch is not None and self._ids is not None
        return F.cross_entropy(self.tasks.restrict(logits, self._ids, self.table), batch.targets)


# -- EWC ------------------------------------------------------------------------------------
class EWCConfig(PluginConfig):
    kind: Literal["ewc"] = "ewc"
    weight: NonNegative = Field(100.0, description="lambda: strength of the quadratic penalty")
    samples: int = Field(256, ge=1, le=10**7, description="training inputs per task for its Fisher")
    fisher: Literal["sampled", "exact"] = Field(
        "sampled",
        description="sampled: one label per input drawn from the model (unbiased, one gradient "
        "per input); exact: the KL metric's diagonal (a Jacobian per input, classes x dearer)",
    )
    chunk: int = Field(32, ge=1, le=10**6, description="inputs per batch of per-sample gradients")


class EWC(SecondaryObjective):
    """``sum_t 1/2 sum_i F_t,i (w_i - w_t,i)^2`` over the tasks finished on this path."""

    def bind(self, ctx: StageContext) -> None:
        from fipframe.builtin.metrics import KL, KLConfig

        metric = KL(KLConfig())
        ends = {t: p for t, p in ctx.ends if t is not None}
        names = ctx.adapter.names
        fishers, anchors = [], []
        for t in _seen(ctx):
            key = f"ewc/{t}/"
            if key + "fisher/" + names[0] not in ctx.carry:
                fisher = self._fisher(ctx, metric, t, ends[t])
                for name in names:
                    ctx.carry[f"{key}fisher/{name}"] = fisher[name]
                    ctx.carry[f"{key}anchor/{name}"] = ends[t][name].detach()
            fishers.append({n: ctx.carry[f"{key}fisher/{n}"] for n in names})
            anchors.append({n: ctx.carry[f"{key}anchor/{n}"] for n in names})
        # sum_t F_t (w - w_t)^2 = A (w - c)^2 + k with A = sum_t F_t, c = sum_t F_t w_t / A:
        # one quadratic per step however many tasks are behind
        self.importance: dict[str, Tensor] = {}
        self.centre: dict[str, Tensor] = {}
        self.offset = None
        for n in names if fishers else ():
            a = sum(f[n] for f in fishers)
            b = sum(f[n] * w[n] for f, w in zip(fishers, anchors, strict=True))
            c = torch.where(a > 0, b / a.clamp_min(torch.finfo(a.dtype).tiny), 0.0)
            k = sum(
                (f[n] * (w[n] - c).square()).sum() for f, w in zip(fishers, anchors, strict=True)
            )
            self.importance[n], self.centre[n] = 0.5 * a, c
            self.offset = 0.5 * k if self.offset is None else self.offset + 0.5 * k

    def _fisher(
        self, ctx: StageContext, metric: object, task: int, point: Params
    ) -> dict[str, Tensor]:
        from fipframe.core.params import ParamSpace

        train = ctx.tasks.tasks[task].train
        x = train.head(min(self.config.samples, len(train)))
        adapter, space = ctx.adapter, ParamSpace.of(point)
        was = adapter.model.training
        adapter.train(False)
        g = torch.Generator(device=train.y.device).manual_seed(1000 + task)
        try:
            total = None
            for i in range(0, I.length(x), self.config.chunk):
                xb = I.narrow(x, i, i + self.config.chunk)
                if self.config.fisher == "exact":
                    d = metric.diag(lambda p, xb=xb: adapter.forward(p, xb), point)  # type: ignore[attr-defined]
                    d = d * I.length(xb)
                else:
                    d = space.flatten(self._sampled(adapter, point, xb, g))
                total = d if total is None else total + d
        finally:
            adapter.train(was)
        assert total is not None
        return dict(space.unflatten(total / I.length(x)))

    @staticmethod
    def _sampled(adapter: Any, point: Params, x: Any, g: torch.Generator) -> Params:
        """Sum over inputs of squared per-sample gradients of log p(y | x), y ~ p(. | x)."""
        with torch.no_grad():
            probs = torch.softmax(adapter.forward(point, x), dim=-1)
        y = torch.multinomial(probs, 1, generator=g)

        def nll(p: Params, xi: Any, yi: Tensor) -> Tensor:
            logp = torch.log_softmax(adapter.forward(p, I.take(xi, None)), dim=-1)
            return -logp.gather(1, yi[None]).sum()

        try:
            grads = torch.func.vmap(torch.func.grad(nll), in_dims=(None, 0, 0))(point, x, y)
            return {n: v.square().sum(0) for n, v in grads.items()}
        except RuntimeError:
            # models with data-dependent control flow in their forward (Hugging Face attention
            # masks check `mask.all()`) cannot be vmapped: one gradient per input instead (an
            # error of the model itself comes back from the loop below)
            pass
        total = {n: torch.zeros_like(v) for n, v in point.items()}
        for i in range(I.length(x)):
            grad = torch.func.grad(nll)(point, I.take(x, torch.tensor(i)), y[i])
            for n, v in grad.items():
                total[n] += v.square()
        return total

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        if self.offset is None:
            return _zero(params)
        return _quadratic(params, self.importance, self.centre) + self.offset


# -- SI -------------------------------------------------------------------------------------
class SIConfig(PluginConfig):
    kind: Literal["si"] = "si"
    weight: NonNegative = Field(1.0, description="c: strength of the surrogate penalty")
    xi: float = Field(0.1, gt=0.0, description="damping of the importance denominator")


class SI(SecondaryObjective):
    """Synaptic Intelligence: importance from the path integral of the gradient along the move."""

    observes_steps = True

    def bind(self, ctx: StageContext) -> None:
        names = ctx.adapter.names
        self.start = {n: ctx.anchor[n].detach() for n in names}
        self.work = {n: torch.zeros_like(self.start[n]) for n in names}
        have = f"si/omega/{names[0]}" in ctx.carry
        self.omega = {n: ctx.carry[f"si/omega/{n}"] for n in names} if have else None
        self.prev = {n: ctx.carry[f"si/anchor/{n}"] for n in names} if have else None

    def observe(self, before: Params, after: Params, grad: Params) -> None:
        # parameters a stage holds fixed have no gradient here and did not move
        self.work = {
            n: w - grad[n] * (after[n] - before[n]) if n in grad else w
            for n, w in self.work.items()
        }

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.work)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            self.work = dict(state)

    def finish(self, params: Params, carry: dict[str, Tensor]) -> None:
        for n, w in self.work.items():
            end = params[n].detach()
            add = w / ((end - self.start[n]).square() + self.config.xi)
            key = f"si/omega/{n}"
            carry[key] = carry[key] + add if key in carry else add
            carry[f"si/anchor/{n}"] = end

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        if self.omega is None or self.prev is None:
            return _zero(params)
        return _quadratic(params, self.omega, self.prev)


# -- LwF ------------------------------------------------------------------------------------
class LwFConfig(PluginConfig):
    kind: Literal["lwf"] = "lwf"
    weight: NonNegative = Field(1.0, description="weight of the distillation term")
    temperature: float = Field(2.0, gt=0.0, description="softmax temperature T")


class LwF(SecondaryObjective):
    """KL from the stage start's softened outputs on the current batch, over earlier classes."""

    def bind(self, ctx: StageContext) -> None:
        if ctx.task is None:
            raise TraversalError("objective lwf needs a stage with `task:` set")
        seen = _seen(ctx)
        classes = sorted({c for t in seen for c in ctx.tasks.tasks[t].classes})
        self.classes = torch.tensor(classes, device=ctx.task.train.y.device, dtype=torch.long)
        self.split = ctx.task.train
        assert ctx.outputs is not None and ctx.batches is not None
        # the stage start's outputs on the whole task, once (eval mode, like every anchor)
        self.teacher = ctx.outputs(ctx.anchor, self.split)[:, self.classes] if classes else None
        # the same batches as task_ce: no extra data (one source, read once per step)
        self.batches = ctx.batches("task_ce", self.split, ctx.batch_size)
        self.sampler = self.batches.sampler
        self._teacher: Tensor | None = None

    def sample(self, step: int) -> Batch | None:
        if self.teacher is None:
            return None
        x, _, idx = self.batches.get(step)
        self._teacher = self.teacher[idx]
        return Batch(x, key=("task", self.sampler.name))  # task_ce's rows

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        if logits is None or self._teacher is None:
            return _zero(params)
        t = self.config.temperature
        student = F.log_softmax(logits[:, self.classes] / t, dim=-1)
        teacher = F.log_softmax(self._teacher / t, dim=-1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t


# -- DER ------------------------------------------------------------------------------------
class DERConfig(PluginConfig):
    kind: Literal["der"] = "der"
    weight: NonNegative = Field(0.5, description="alpha: weight of the logit-matching term")


class DER(FromMemory):
    """Mean squared error to the logits recorded when each stored input entered the memory."""

    def bind(self, ctx: StageContext) -> None:
        if len(ctx.memory) and ctx.memory.logits is None:
            raise TraversalError("objective der needs outputs recorded with the memory")
        super().bind(ctx)

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        if logits is None or self.idx is None:
            return _zero(params)
        return F.mse_loss(logits, self.memory.logits[self.idx])  # type: ignore[index]


@hookimpl
def fipframe_register_objectives() -> list[Spec]:
    return [
        Spec("joint_ce", JointCEConfig, JointCE, "cross-entropy on all tasks seen so far (joint)"),
        Spec("ewc", EWCConfig, EWC, "EWC: diagonal-Fisher quadratic penalty to each task's end"),
        Spec("si", SIConfig, SI, "Synaptic Intelligence: path-integral importance penalty"),
        Spec("lwf", LwFConfig, LwF, "LwF: distil the stage start's outputs on the new inputs"),
        Spec("der", DERConfig, DER, "DER: match the outputs recorded with stored inputs"),
    ]
