"""Manifold: where the traversable weights live and how to move on it.

The vocabulary follows geoopt: ``projx`` (project a point), ``proju`` (project onto the
tangent space), ``egrad2rgrad``, ``retr`` (retraction), ``transp`` (vector transport),
``inner``. A manifold acts on a whole :data:`Params` tree; :class:`GeooptManifold` applies one
geoopt manifold tensor by tensor. The manifold is kept beside plain tensors, never on a tensor
subclass, so deepcopy, vmap and safetensors keep working.
"""

from __future__ import annotations

import fnmatch
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fipframe.core.params import Params, dot, like, values
from fipframe.errors import ConfigError

with warnings.catch_warnings():  # geoopt uses torch.jit.script, deprecated in recent torch
    warnings.simplefilter("ignore", FutureWarning)
    import geoopt


class Manifold(ABC):
    """A Riemannian manifold over a Params tree."""

    def bind(self, names: Sequence[str]) -> None:  # noqa: B027  (optional hook)
        """Called once with the traversable parameter names; check them here."""

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

    def inner(self, p: Params, u: Params, v: Params) -> Tensor:
        return torch.stack([self.geo.inner(p[k], u[k], v[k]).sum() for k in p]).sum()


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

    def inner(self, p: Params, u: Params, v: Params) -> Tensor:
        return dot(u, v)


class Rows:
    """A geoopt manifold acting on a tensor seen as a matrix of its output rows.

    ``[out, ...]`` is viewed as ``[out, rest]``. With ``transpose`` the matrix is ``[rest, out]``
    (Stiefel wants more rows than columns, so that the outputs' weight vectors are orthonormal).
    """

    def __init__(self, geo: geoopt.Manifold, transpose: bool = False):
        self.geo = geo
        self.transpose = transpose

    def _in(self, x: Tensor) -> Tensor:
        m = x.reshape(x.shape[0], -1)
        return m.T if self.transpose and m.shape[0] < m.shape[1] else m

    def _out(self, m: Tensor, like: Tensor) -> Tensor:
        rows = like.reshape(like.shape[0], -1)
        if self.transpose and rows.shape[0] < rows.shape[1]:
            m = m.T
        return m.reshape(like.shape)

    def projx(self, x: Tensor) -> Tensor:
        return self._out(self.geo.projx(self._in(x)), x)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        return self._out(self.geo.proju(self._in(x), self._in(u)), x)

    def egrad2rgrad(self, x: Tensor, g: Tensor) -> Tensor:
        return self._out(self.geo.egrad2rgrad(self._in(x), self._in(g)), x)

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        return self._out(self.geo.retr(self._in(x), self._in(u)), x)

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return self._out(self.geo.transp(self._in(x), self._in(y), self._in(v)), x)

    def inner(self, x: Tensor, u: Tensor, v: Tensor) -> Tensor:
        return self.geo.inner(self._in(x), self._in(u), self._in(v)).sum()


def sphere_rows() -> Rows:
    """Each output row (a neuron's or a conv filter's weights) on the unit sphere."""
    return Rows(geoopt.Sphere())


def stiefel_rows() -> Rows:
    """Output weight vectors orthonormal (the Stiefel manifold, embedded metric)."""
    return Rows(geoopt.EuclideanStiefel(), transpose=True)


class Product(Manifold):
    """Per-parameter manifolds chosen by glob; unmatched parameters are Euclidean.

    Args:
        groups: ``(globs, factory)`` pairs, first match wins; ``factory()`` returns a
            :class:`Rows` (or anything with its per-tensor methods).
    """

    def __init__(self, groups: Sequence[tuple[Sequence[str], Callable[[], Rows]]]):
        self.groups = [(tuple(g), f) for g, f in groups]
        self._of: dict[str, Rows | None] = {}

    def bind(self, names: Sequence[str]) -> None:
        for i, (globs, _) in enumerate(self.groups):
            for glob in globs:
                if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                    raise ConfigError(
                        f"manifold.groups[{i}].params: {glob!r} matches no traversable "
                        f"parameter; they are: {', '.join(names[:8])}"
                        + (" ..." if len(names) > 8 else "")
                    )

    def _m(self, name: str) -> Rows | None:
        if name not in self._of:
            self._of[name] = next(
                (
                    f()
                    for globs, f in self.groups
                    if any(fnmatch.fnmatchcase(name, g) for g in globs)
                ),
                None,
            )
        return self._of[name]

    def _map(self, fn: str, p: Params, *rest: Params) -> Params:
        out = {}
        for k, x in p.items():
            m = self._m(k)
            args = [r[k] for r in rest]
            out[k] = getattr(m, fn)(x, *args) if m is not None else (args[-1] if args else x)
        return out

    def projx(self, p: Params) -> Params:
        return self._map("projx", p)

    def proju(self, p: Params, u: Params) -> Params:
        return self._map("proju", p, u)

    def egrad2rgrad(self, p: Params, g: Params) -> Params:
        return self._map("egrad2rgrad", p, g)

    def retr(self, p: Params, u: Params, t: float | Tensor = 1.0) -> Params:
        out = {}
        for k, x in p.items():
            m = self._m(k)
            out[k] = m.retr(x, u[k] * t) if m is not None else x + u[k] * t
        return out

    def transp(self, p: Params, q: Params, u: Params) -> Params:
        return {
            k: (m.transp(p[k], q[k], u[k]) if (m := self._m(k)) is not None else u[k]) for k in p
        }

    def inner(self, p: Params, u: Params, v: Params) -> Tensor:
        terms = [
            m.inner(p[k], u[k], v[k]) if (m := self._m(k)) is not None else (u[k] * v[k]).sum()
            for k in p
        ]
        return torch.stack(terms).sum()
