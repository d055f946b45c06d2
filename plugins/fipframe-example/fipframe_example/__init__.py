"""fipframe-example: one metric, one objective and one architecture, registered by entry point.

Everything a plugin needs is here: config models derived from ``PluginConfig`` with
``kind: Literal[...]``, implementations of the core interfaces, and ``fipframe.hookimpl``
functions returning ``fipframe.Spec`` lists.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

import fipframe
from fipframe.core import ArchitectureAdapter, Metric, PluginConfig, Scheduled, SecondaryObjective
from fipframe.core.objective import Batch, StageContext
from fipframe.core.params import Params

__version__ = "0.1.0"


# -- a metric -------------------------------------------------------------------------------
class TemperedKLConfig(PluginConfig):
    kind: Literal["tempered_kl"] = "tempered_kl"
    temperature: float = Field(2.0, gt=0.0, description="softmax temperature T")


class TemperedKL(Metric):
    """``T^2 KL(softmax(z0/T) || softmax(z/T))``.

    Its Hessian at zero displacement is the Fisher of the tempered softmax: the ``T^2`` cancels
    the ``1/T^2`` of the chain rule. No closed form is given here, so fipframe derives
    ``output_hvp`` by autodiff, and the oracle tests check it all the same.
    """

    def reference(self, logits: Tensor) -> Tensor:
        return torch.log_softmax(logits.detach() / self.config.temperature, dim=-1)

    def divergence(self, logits: Tensor, reference: Tensor) -> Tensor:
        t = self.config.temperature
        logp = torch.log_softmax(logits / t, dim=-1)
        return t * t * (reference.exp() * (reference - logp)).sum(-1)


# -- an objective ---------------------------------------------------------------------------
class WeightDecayToStartConfig(PluginConfig):
    kind: Literal["weight_decay_to_start"] = "weight_decay_to_start"
    weight: Scheduled = Field(1e-3, description="weight beta of this term")


class WeightDecayToStart(SecondaryObjective):
    """``1/2 ||w - w_start||^2``: stays near the stage's first point in weight space."""

    def bind(self, ctx: StageContext) -> None:
        self.start = {k: v.detach() for k, v in ctx.anchor.items()}

    def loss(self, params: Params, logits: Tensor | None, batch: Batch | None) -> Tensor:
        return 0.5 * sum((params[k] - self.start[k]).square().sum() for k in params)


# -- an architecture ------------------------------------------------------------------------
class LeNet5Config(PluginConfig):
    kind: Literal["lenet5"] = "lenet5"
    traversable: tuple[str, ...] = ("*",)


def build_lenet5(
    cfg: LeNet5Config, *, input_shape: tuple[int, ...], num_classes: int
) -> ArchitectureAdapter:
    c, h, _ = input_shape
    model = nn.Sequential(
        nn.ZeroPad2d(2 if h == 28 else 0),
        nn.Conv2d(c, 6, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Tanh(),
        nn.Linear(120, 84),
        nn.Tanh(),
        nn.Linear(84, num_classes),
    )
    return ArchitectureAdapter(model, traversable=cfg.traversable, num_classes=num_classes)


# -- registration ---------------------------------------------------------------------------
@fipframe.hookimpl
def fipframe_register_metrics():
    return [
        fipframe.Spec(
            "tempered_kl", TemperedKLConfig, TemperedKL, "temperature-scaled KL of softmax outputs"
        )
    ]


@fipframe.hookimpl
def fipframe_register_objectives():
    return [
        fipframe.Spec(
            "weight_decay_to_start",
            WeightDecayToStartConfig,
            WeightDecayToStart,
            "1/2 ||w - w_start||^2 in weight space",
        )
    ]


@fipframe.hookimpl
def fipframe_register_adapters():
    return [fipframe.Spec("lenet5", LeNet5Config, build_lenet5, "LeNet-5 (tanh, avg-pool)")]
