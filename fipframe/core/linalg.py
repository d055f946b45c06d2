"""Matrix-free linear algebra on a symmetric PSD operator ``A v`` over flat vectors.

Used with ``A = g`` (the metric on stored inputs) through :meth:`Metric.mvp`; nothing here ever
forms ``A``. All functions take ``matvec: Tensor[P] -> Tensor[P]`` and stay on ``matvec``'s
device; the only host syncs are the convergence checks of CG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


@dataclass
class Eigen:
    """Top eigenpairs: ``values`` [k] descending, ``vectors`` [k, P] orthonormal rows."""

    values: Tensor
    vectors: Tensor

    def project_out(self, v: Tensor) -> Tensor:
        """``v`` minus its component in the span of the eigenvectors."""
        return v - self.vectors.T @ (self.vectors @ v)

    def captured(self, v: Tensor) -> Tensor:
        """Fraction of ``||v||^2`` inside the eigenspace (cos^2 of the angle to it)."""
        inside = (self.vectors @ v).square().sum()
        return inside / v.square().sum().clamp_min(torch.finfo(v.dtype).tiny)


def lanczos(
    matvec: MatVec,
    size: int,
    k: int,
    *,
    iters: int | None = None,
    like: Tensor | None = None,
    seed: int = 0,
) -> Eigen:
    """Top-``k`` eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Runs ``iters`` (default ``min(size, max(2k + 10, 30))``) matrix-vector products, each
    followed by Gram-Schmidt against every previous Lanczos vector (twice, for stability), then
    takes the Ritz pairs of the tridiagonal matrix.
    """
    if k < 1 or k > size:
        raise ValueError(f"k must be in 1..{size}, got {k}")
    m = min(size, iters or max(2 * k + 10, 30))
    ref = like if like is not None else torch.empty(0)
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(size, generator=g, dtype=ref.dtype).to(ref.device)
    q = q / q.norm()
    basis = torch.zeros(m, size, dtype=ref.dtype, device=ref.device)
    alpha = torch.zeros(m, dtype=ref.dtype, device=ref.device)
    beta = torch.zeros(m, dtype=ref.dtype, device=ref.device)
    steps = m
    for j in range(m):
        basis[j] = q
        w = matvec(q)
        alpha[j] = w @ q
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        if j + 1 < m:
            beta[j] = w.norm()
            if beta[j] <= 1e-10 * alpha[: j + 1].abs().max().clamp_min(1e-30):  # invariant subspace
                steps = j + 1
                break
            q = w / beta[j]
    t = (
        torch.diag(alpha[:steps])
        + torch.diag(beta[: steps - 1], 1)
        + torch.diag(beta[: steps - 1], -1)
    )
    evals, evecs = torch.linalg.eigh(t)
    order = torch.argsort(evals, descending=True)[: min(k, steps)]
    vectors = evecs[:, order].T @ basis[:steps]
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    return Eigen(evals[order], vectors)


def conjugate_gradient(
    matvec: MatVec, b: Tensor, *, damping: float = 0.0, iters: int = 50, tol: float | None = None
) -> tuple[Tensor, int]:
    """Solve ``(A + damping I) x = b``; return ``x`` and the iterations used.

    With ``tol`` it stops when ``||r|| <= tol * ||b||`` (one host sync per iteration); without,
    it runs exactly ``iters`` iterations and never syncs, which is what a hot loop wants.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    stop = None if tol is None else (tol * b.norm()) ** 2
    for i in range(iters):
        if stop is not None and rs <= stop:
            return x, i
        ap = matvec(p) + damping * p
        step = rs / (p @ ap).clamp_min(torch.finfo(b.dtype).tiny)
        x = x + step * p
        r = r - step * ap
        rs_new = r @ r
        p = r + (rs_new / rs.clamp_min(torch.finfo(b.dtype).tiny)) * p
        rs = rs_new
    return x, iters


def hutchinson_trace(
    matvec: MatVec, size: int, samples: int, *, like: Tensor, seed: int = 0
) -> Tensor:
    """Unbiased trace estimate ``mean_i v_i^T A v_i`` with Rademacher ``v_i``."""
    return hutchinson_diag(matvec, size, samples, like=like, seed=seed).sum()


def hutchinson_diag(
    matvec: MatVec, size: int, samples: int, *, like: Tensor, seed: int = 0
) -> Tensor:
    """Unbiased diagonal estimate ``mean_i v_i * (A v_i)`` with Rademacher ``v_i``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    acc = torch.zeros(size, dtype=like.dtype, device=like.device)
    for _ in range(samples):
        v = (torch.randint(0, 2, (size,), generator=g) * 2 - 1).to(like.device, like.dtype)
        acc += v * matvec(v)
    return acc / samples


def participation_ratio(values: Tensor) -> Tensor:
    """Effective rank ``(sum l)^2 / sum l^2`` of non-negative eigenvalues."""
    values = values.clamp_min(0)
    return values.sum().square() / values.square().sum().clamp_min(torch.finfo(values.dtype).tiny)
