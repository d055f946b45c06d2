"""Manifold: where the traversable weights live and how to move on it.

The vocabulary follows geoopt: ``projx`` (project a point), ``proju`` (project onto the
tangent space), ``egrad2rgrad``, ``retr`` (retraction), ``transp`` (vector transport),
``inner``. A manifold acts on a whole :data:`Params` tree; :class:`GeooptManifold` applies one
geoopt manifold tensor by tensor. The manifold is kept beside plain tensors, never on a tensor
subclass, so deepcopy, vmap and safetensors keep working.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from fipframe.core.params import Params, dot, like, values

with warnings.catch_warnings():  # geoopt uses torch.jit.script, deprecated in recent torch
    warnings.simplefilter("ignore", FutureWarning)
    import geoopt


class Manifold(ABC):
    """A Riemannian manifold over a Params tree."""

    @abstractmethod
    def projx(self, p: Params) -> Params:
        """Project a point onto the manifold."""

    @abstractmethod
    def proju(self, p: Params, u: Params) -> Params:
        """Project ``u`` onto the tangent space at ``p``."""

    def egrad2rgrad(self, p: Params, g: Params) -> Params:
        """Turn a Euclidean gradient into the Riemannian one (default: tangent projection)."""
        return self.proju(p, g)

    @abstractmethod
    def retr(self, p: Params, u: Params, t: float | Tensor = 1.0) -> Params:
        """Move from ``p`` along tangent ``u`` by ``t`` and land on the manifold."""

    @abstractmethod
    def transp(self, p: Params, q: Params, u: Params) -> Params:
        """Transport tangent ``u`` at ``p`` to the tangent space at ``q``."""

    def inner(self, p: Params, u: Params, v: Params) -> Tensor:
        """Riemannian inner product of tangents ``u`` and ``v`` at ``p`` (0-d tensor)."""
        return dot(u, v)


class GeooptManifold(Manifold):
    """Applies one geoopt manifold to every tensor of the tree."""

    def __init__(self, manifold: geoopt.Manifold):
        self.geo = manifold

    def projx(self, p: Params) -> Params:
        return {k: self.geo.projx(v) for k, v in p.items()}

    def proju(self, p: Params, u: Params) -> Params:
        return {k: self.geo.proju(p[k], u[k]) for k in p}

    def egrad2rgrad(self, p: Params, g: Params) -> Params:
        return {k: self.geo.egrad2rgrad(p[k], g[k]) for k in p}

    def retr(self, p: Params, u: Params, t: float | Tensor = 1.0) -> Params:
        return {k: self.geo.retr(p[k], u[k] * t) for k in p}

    def transp(self, p: Params, q: Params, u: Params) -> Params:
        return {k: self.geo.transp(p[k], q[k], u[k]) for k in p}


class Euclidean(GeooptManifold):
    """Flat weight space (geoopt.Euclidean), with fused ``_foreach`` fast paths."""

    def __init__(self) -> None:
        super().__init__(geoopt.Euclidean())

    def projx(self, p: Params) -> Params:
        return dict(p)

    def proju(self, p: Params, u: Params) -> Params:
        return dict(u)

    def egrad2rgrad(self, p: Params, g: Params) -> Params:
        return dict(g)

    def retr(self, p: Params, u: Params, t: float | Tensor = 1.0) -> Params:
        if isinstance(t, Tensor):
            return like(p, torch._foreach_add(values(p), torch._foreach_mul(values(u), t)))
        return like(p, torch._foreach_add(values(p), values(u), alpha=t))

    def transp(self, p: Params, q: Params, u: Params) -> Params:
        return dict(u)
