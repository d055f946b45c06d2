"""Built-in manifolds."""

from __future__ import annotations

from typing import Literal

from fipframe.core.configs import PluginConfig
from fipframe.core.manifold import Euclidean
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class EuclideanConfig(PluginConfig):
    kind: Literal["euclidean"] = "euclidean"


@hookimpl
def fipframe_register_manifolds() -> list[Spec]:
    return [Spec("euclidean", EuclideanConfig, lambda cfg: Euclidean(), "flat weight space")]
