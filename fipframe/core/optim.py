"""Functional optimisers: pure ``init``/``update`` pairs over lists of tensors.

They return an update direction and the new state; applying it (with the manifold's
retraction) is the integrator's job. State is a flat dict of tensor lists and numbers so it
can be saved to safetensors and restored bit for bit.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from fipframe.core.configs import PluginConfig

State = dict[str, object]


class OptimizerConfig(PluginConfig):
    """The inner optimiser of an integrator."""

    name: Literal["adam", "sgd"] = Field("adam", description="adam or sgd (with momentum)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd momentum / adam beta1")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="adam beta2")
    eps: float = Field(
        1e-8,
        gt=0.0,
        le=1.0,
        description="adam epsilon (at most 1: larger turns Adam into SGD at lr / eps)",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="L2 weight decay added to the gradient")


def init(cfg: OptimizerConfig, params: list[Tensor]) -> State:
    if cfg.name == "adam":
        return {
            "m": [torch.zeros_like(p) for p in params],
            "v": [torch.zeros_like(p) for p in params],
            "t": 0,
        }
    return {"m": [torch.zeros_like(p) for p in params], "t": 0}


def update(
    cfg: OptimizerConfig, params: list[Tensor], grads: list[Tensor], state: State
) -> tuple[list[Tensor], State]:
    """Return the descent direction (to be scaled by -lr) and the new state."""
    if cfg.weight_decay:
        grads = torch._foreach_add(grads, params, alpha=cfg.weight_decay)
    t = int(state["t"]) + 1  # type: ignore[call-overload]
    m = torch._foreach_mul(state["m"], cfg.momentum)  # type: ignore[arg-type]
    if cfg.name == "sgd":
        torch._foreach_add_(m, grads)
        return m, {"m": m, "t": t}
    torch._foreach_add_(m, grads, alpha=1.0 - cfg.momentum)
    v = torch._foreach_mul(state["v"], cfg.beta2)  # type: ignore[arg-type]
    torch._foreach_addcmul_(v, grads, grads, value=1.0 - cfg.beta2)
    bias1 = 1.0 - cfg.momentum**t
    bias2 = 1.0 - cfg.beta2**t
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bias2**0.5)
    torch._foreach_add_(denom, cfg.eps)
    direction = torch._foreach_div(m, denom)
    torch._foreach_div_(direction, bias1)
    return direction, {"m": m, "v": v, "t": t}
