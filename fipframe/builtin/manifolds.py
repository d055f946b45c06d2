"""Built-in manifolds: flat weight space, and spheres or Stiefel manifolds per parameter group.

``product`` puts chosen parameters on a manifold, the rest stay Euclidean::

    manifold:
      kind: product
      groups:
        - {params: ["features.*.weight"], manifold: sphere}   # conv filters before BatchNorm
        - {params: ["head.weight"], manifold: stiefel}        # orthonormal output vectors

``sphere`` keeps each output row (a neuron's or a filter's weights) at unit norm: use it only
where the function is invariant to that scale (a layer followed by BatchNorm), since the
stage's first point is projected onto it. ``stiefel`` keeps the output weight vectors
orthonormal.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fipframe.core.configs import ConfigModel, PluginConfig
from fipframe.core.manifold import Euclidean, Product, sphere_rows, stiefel_rows
from fipframe.plugins import hookimpl
from fipframe.registry import Spec

_ROWS = {"sphere": sphere_rows, "stiefel": stiefel_rows}


class EuclideanConfig(PluginConfig):
    kind: Literal["euclidean"] = "euclidean"


class GroupConfig(ConfigModel):
    params: list[str] = Field(min_length=1, description="globs of parameter names")
    manifold: Literal["sphere", "stiefel"] = Field(description="manifold of each matching tensor")


class ProductConfig(PluginConfig):
    kind: Literal["product"] = "product"
    groups: list[GroupConfig] = Field(min_length=1, description="first matching group wins")


def build_product(cfg: ProductConfig) -> Product:
    return Product([(g.params, _ROWS[g.manifold]) for g in cfg.groups])


@hookimpl
def fipframe_register_manifolds() -> list[Spec]:
    return [
        Spec("euclidean", EuclideanConfig, lambda cfg: Euclidean(), "flat weight space"),
        Spec(
            "product",
            ProductConfig,
            build_product,
            "sphere or Stiefel manifolds for parameter groups chosen by glob; rest flat",
        ),
    ]
