"""Ensembles of networks of one architecture, evaluated in one batched forward; their diversity;
and adversarial attacks on them through torchattacks (an optional extra).

:class:`Ensemble` stacks its members' weights with ``torch.func.stack_module_state`` and runs
them all in one ``vmap`` of ``functional_call``: one forward for K members. It is an
``nn.Module`` whose output is the log of the members' averaged probabilities, so a white-box
attack on it (cross-entropy of that output) attacks the ensemble's own prediction.

Attacks work in pixel space: the data are standardised, so :func:`attack` takes the data's
``mean`` and ``std`` (per channel) and hands torchattacks images in ``[0, 1]`` with the
normalisation applied inside the model, the way torchattacks expects; ``eps`` and ``step_size``
are in pixel units (MNIST's usual L-inf budget is 0.3, CIFAR's 8/255).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from fipframe.core.configs import ConfigModel
from fipframe.errors import ConfigError


class Ensemble(nn.Module):
    """K networks of one architecture; ``forward`` gives ``log mean_k softmax(f_k(x))``.

    Args:
        model: an instance of the members' architecture (its weights are not used).
        members: :class:`~fipframe.eval.points.Point` s, each loaded into a copy of ``model``
            (moved weights, fixed weights, buffers); or the member modules themselves.
    """

    def __init__(self, model: nn.Module, members: Sequence[Any]):
        super().__init__()
        from fipframe.eval.points import Point, load_module

        if not members:
            raise ConfigError("ensemble: no members")
        modules = []
        for m in members:
            if isinstance(m, Point):
                m = load_module(copy.deepcopy(model), m)
            modules.append(m.eval())
        params, buffers = torch.func.stack_module_state(modules)
        self.k = len(modules)
        # the architecture without storage: vmap calls it with the stacked tensors
        self._base = [copy.deepcopy(modules[0]).to("meta")]
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        for i, v in enumerate(params.values()):
            self.register_parameter(f"p{i}", nn.Parameter(v.detach(), requires_grad=False))
        for i, v in enumerate(buffers.values()):
            self.register_buffer(f"b{i}", v.detach())
        self._members = modules  # the loop reference (and attacks on one member)

    @property
    def modules_(self) -> list[nn.Module]:
        return self._members

    def _stacked(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        params = {n: getattr(self, f"p{i}") for i, n in enumerate(self._param_names)}
        buffers = {n: getattr(self, f"b{i}") for i, n in enumerate(self._buffer_names)}
        return params, buffers

    def member_logits(self, x: Tensor) -> Tensor:
        """``[K, N, classes]``: every member's logits, in one vmapped forward (eval mode)."""
        base = self._base[0].eval()
        params, buffers = self._stacked()

        def one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
            out = torch.func.functional_call(base, (p, b), (x,))
            return getattr(out, "logits", out)

        return torch.vmap(one, in_dims=(0, 0, None))(params, buffers, x)

    def loop_logits(self, x: Tensor) -> Tensor:
        """The same as :meth:`member_logits`, one member after another (the reference)."""
        return torch.stack([m(x) for m in self._members])

    def forward(self, x: Tensor) -> Tensor:
        logp = F.log_softmax(self.member_logits(x), dim=-1)
        return torch.logsumexp(logp, dim=0) - math.log(self.k)

    def _apply(self, fn: Any, recurse: bool = True) -> Ensemble:  # type: ignore[override]
        super()._apply(fn, recurse)
        self._members = [m._apply(fn) for m in self._members]  # .to/.cuda/.double alike
        return self


def batched(fn: Any, x: Tensor, batch_size: int = 1024) -> Tensor:
    """``fn`` over ``x`` in batches, without gradients, concatenated along the batch axis
    (the last but one axis for member logits ``[K, N, C]``)."""
    with torch.no_grad():
        outs = [fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(outs, dim=-2)


def accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


def diversity(ensemble: Ensemble, x: Tensor, y: Tensor, batch_size: int = 1024) -> dict[str, Any]:
    """What makes an ensemble more than one network, on inputs ``x`` with labels ``y``:

    - ``disagreement``: mean over member pairs of the fraction of inputs they label differently,
      and the ``[K, K]`` matrix of it;
    - ``distance``: ``[K, K]`` Euclidean distances between the members' weights;
    - ``member_acc``: each member's accuracy; ``acc``: the averaged-probability ensemble's.
    """
    logits = batched(ensemble.member_logits, x, batch_size)
    pred = logits.argmax(-1)  # [K, N]
    k = pred.shape[0]
    dis = (pred.unsqueeze(0) != pred.unsqueeze(1)).float().mean(-1)
    params, _ = ensemble._stacked()
    flat = torch.cat([p.detach().reshape(k, -1).float() for p in params.values()], dim=1)
    dist = torch.cdist(flat, flat)
    probs = F.softmax(logits.float(), dim=-1).mean(0)
    pairs = dis.sum() / max(k * (k - 1), 1)
    return {
        "disagreement": float(pairs),
        "disagreement_matrix": dis.tolist(),
        "distance_matrix": dist.tolist(),
        "member_acc": [accuracy(lg, y) for lg in logits],
        "acc": accuracy(probs, y),
    }


def weight_pca(points: Sequence[Tensor], dims: int = 2) -> Tensor:
    """The flattened weight vectors ``points`` projected on their first ``dims`` principal axes."""
    flat = torch.stack([p.reshape(-1).float() for p in points])
    centred = flat - flat.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:dims].T


# -- attacks ---------------------------------------------------------------------------------
class AttackConfig(ConfigModel):
    """An L-inf attack through torchattacks; ``eps`` and ``step_size`` in pixel units."""

    kind: Literal["fgsm", "pgd"] = "pgd"
    eps: float = Field(0.1, gt=0.0, description="L-inf budget in pixel units of [0, 1] images")
    steps: int = Field(10, ge=1, le=10**4, description="PGD iterations")
    step_size: float | None = Field(
        None, gt=0.0, description="PGD step in pixel units (None: 2.5 eps / steps)"
    )
    random_start: bool = Field(True, description="PGD starts at a random point of the ball")

    @model_validator(mode="after")
    def _in_range(self) -> AttackConfig:
        if self.eps > 1.0:
            raise ValueError(
                f"eps: {self.eps} is beyond the data's range (pixels lie in [0, 1]); MNIST's usual "
                "budget is 0.3, CIFAR's 8/255 = 0.031"
            )
        return self


class _Pixels(nn.Module):
    """``model((x01 - mean) / std)``: the model on pixel-space inputs."""

    def __init__(self, model: nn.Module, mean: Tensor, std: Tensor):
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, x: Tensor) -> Tensor:
        out = self.model((x - self.mean) / self.std)
        return getattr(out, "logits", out)


def _channels(v: Sequence[float] | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1)
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: AttackConfig,
    *,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    batch_size: int = 500,
    seed: int = 0,
) -> Tensor:
    """Adversarial versions of the standardised inputs ``x`` (returned standardised), crafted
    on ``model`` (a network, or an :class:`Ensemble` for the adaptive attack) by torchattacks."""
    try:
        import torchattacks
    except ImportError:
        raise ConfigError(
            "attacks need torchattacks: pip install 'fipframe[attacks]' (or torchattacks "
            "--no-deps: it pins an old requests)"
        ) from None
    m, s = _channels(mean, x), _channels(std, x)
    if x.dim() < 2 or m.shape[1] not in (1, x.shape[1]):
        raise ConfigError(
            f"attack: {m.shape[1]} per-channel means for inputs of shape {list(x.shape)}; give "
            "one number, or one per channel of [N, C, ...] images"
        )
    pixels = x * s + m
    lo, hi = float(pixels.min()), float(pixels.max())
    # pixel data fill [0, 1]: a mean/std that are not the data's would rescale eps silently
    if lo < -1e-3 or hi > 1 + 1e-3 or lo > 0.1 or hi < 0.9:
        raise ConfigError(
            f"attack: the inputs span [{lo:.3g}, {hi:.3g}] once un-standardised with mean "
            f"{m.flatten().tolist()} and std {s.flatten().tolist()}, not about [0, 1]; "
            "give the data's own mean and std"
        )
    if config.eps > hi - lo:
        raise ConfigError(
            f"attack.eps: {config.eps} is larger than the inputs' whole range {hi - lo:.3g}"
        )
    net = _Pixels(model, m, s).eval()
    if config.kind == "fgsm":
        atk = torchattacks.FGSM(net, eps=config.eps)
    else:
        step = config.step_size or 2.5 * config.eps / config.steps
        atk = torchattacks.PGD(
            net, eps=config.eps, alpha=step, steps=config.steps, random_start=config.random_start
        )
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(x), batch_size):
        out.append(atk(pixels[i : i + batch_size].clamp(0, 1), y[i : i + batch_size]).detach())
    return (torch.cat(out) - m) / s


def members(
    run_dir: Any, branch: str, k: int | None = None, stages: str = "*", device: Any = "cpu"
) -> list[Any]:
    """``k`` points saved along ``branch`` (stage ends, and with ``run.save_every`` the points
    between) whose stage names match the glob ``stages``, evenly spaced along the path, the
    last one included; ``k=None``: all of them."""
    import fnmatch

    from fipframe.eval.points import path_points

    points = [
        p
        for p in path_points(run_dir, branch, device)
        if fnmatch.fnmatchcase(str(p.meta.get("stage")), stages)
    ]
    if not points:
        raise ConfigError(f"{run_dir}: branch {branch!r} has no saved points of stages {stages!r}")
    if k is None:
        return points
    if k < 1 or k > len(points):
        raise ConfigError(
            f"ensemble: {k} members asked of branch {branch!r}, which saved {len(points)} points "
            f"of stages {stages!r}; ask for at most {len(points)} or save more (run.save_every)"
        )
    n = len(points)
    picks = (
        sorted({n - 1 - round(i * (n - 1) / max(k - 1, 1)) for i in range(k)}) if k > 1 else [n - 1]
    )
    return [points[i] for i in picks]
