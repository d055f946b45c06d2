"""Output-divergence metrics: squared L2 on logits, KL and Bhattacharyya between softmaxes.

Each gives ``D(z, z0)`` per sample and the closed form of its Hessian at zero displacement:

- ``l2``: ``D = 1/2 ||z - z0||^2``, ``H = I`` (so ``g = E[J^T J]``, the papers' written form).
- ``kl``: ``D = KL(softmax(z0) || softmax(z))``, ``H = F = diag(p) - p p^T`` (the Fisher
  information of the categorical output).
- ``bhattacharyya``: ``D = -log sum_i sqrt(p_i q_i)``, the authors' choice; to second order
  ``D = (1/8) dz^T F dz``, so ``H = F / 4``. Computed in log space so gradients stay finite
  when probabilities underflow.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from fipframe.core.configs import PluginConfig
from fipframe.core.functional import ProductMode
from fipframe.core.metric import Metric
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class OutputMetricConfig(PluginConfig):
    """Settings shared by output-divergence metrics."""

    product: ProductMode = Field(
        "forward",
        description="how g v gets J v: forward (dual numbers, then a separate pullback: least "
        "memory), fused (one dual forward that keeps the graph: fastest, more memory), or "
        "reverse (double backward: for ops without forward-mode rules)",
    )


def _flat(z: Tensor) -> Tensor:
    return z.reshape(z.shape[0], -1)


class L2Config(OutputMetricConfig):
    kind: Literal["l2"] = "l2"


class L2Logits(Metric):
    """Half squared Euclidean distance between logits."""

    def divergence(self, logits: Tensor, reference: Tensor) -> Tensor:
        return 0.5 * _flat(logits - reference).square().sum(1)

    def output_hvp(self, z: Tensor, u: Tensor) -> Tensor:
        return u


def fisher_vp(z: Tensor, u: Tensor) -> Tensor:
    """``(diag(p) - p p^T) u`` per sample, ``p = softmax(z)`` over the last dimension."""
    p = torch.softmax(z, dim=-1)
    pu = p * u
    return pu - p * pu.sum(-1, keepdim=True)


class KLConfig(OutputMetricConfig):
    kind: Literal["kl"] = "kl"


class KL(Metric):
    """KL(anchor || current) between categorical outputs; its metric is the Fisher."""

    def reference(self, logits: Tensor) -> Tensor:
        return torch.log_softmax(logits.detach(), dim=-1)

    def divergence(self, logits: Tensor, reference: Tensor) -> Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        return _flat(F.kl_div(logp, reference, log_target=True, reduction="none")).sum(1)

    def output_hvp(self, z: Tensor, u: Tensor) -> Tensor:
        return fisher_vp(z, u)


class BhattacharyyaConfig(OutputMetricConfig):
    kind: Literal["bhattacharyya"] = "bhattacharyya"


class Bhattacharyya(Metric):
    """Bhattacharyya distance between categorical outputs (symmetric; H = Fisher / 4)."""

    def reference(self, logits: Tensor) -> Tensor:
        return torch.log_softmax(logits.detach(), dim=-1)

    def divergence(self, logits: Tensor, reference: Tensor) -> Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        log_bc = torch.logsumexp(0.5 * (logp + reference), dim=-1)
        return -_flat(log_bc).sum(1)

    def output_hvp(self, z: Tensor, u: Tensor) -> Tensor:
        return 0.25 * fisher_vp(z, u)


@hookimpl
def fipframe_register_metrics() -> list[Spec]:
    return [
        Spec("l2", L2Config, L2Logits, "1/2 squared L2 distance between logits (H = I)"),
        Spec("kl", KLConfig, KL, "KL(anchor || current) of softmax outputs (H = Fisher)"),
        Spec(
            "bhattacharyya",
            BhattacharyyaConfig,
            Bhattacharyya,
            "Bhattacharyya distance of softmax outputs, the authors' choice (H = Fisher/4)",
        ),
    ]
