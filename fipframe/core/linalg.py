"""Matrix-free linear algebra on a symmetric PSD operator ``A v`` over flat vectors.

Used with ``A = g`` (the metric on stored inputs) through :meth:`Metric.mvp`; nothing here ever
forms ``A``. All functions take ``matvec: Tensor[P] -> Tensor[P]`` and stay on ``matvec``'s
device; the only host syncs are the convergence checks of CG.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def lanczos_paths(
    matvec: Callable[[Tensor, Tensor | None], Tensor],
    size: int,
    ks: Sequence[int],
    *,
    iters: Sequence[int | None],
    seeds: Sequence[int],
    like: Tensor,
) -> list[Eigen]:
    """:func:`lanczos` on K operators at once: ``matvec(v, rows)`` as in
    :func:`conjugate_gradients` (the vectors ``v`` [R, size] of the operators ``rows``, None
    for all K). Row ``k`` runs the alone iteration with its own ``ks[k]``, ``iters[k]`` and
    start vector ``seeds[k]``, and leaves the stack at its own last iteration or at an
    invariant subspace; one host sync per iteration, as alone.
    """
    n = len(ks)
    for k in ks:
        if k < 1 or k > size:
            raise ValueError(f"k must be in 1..{size}, got {k}")
    ms = [min(size, it or max(2 * k + 10, 30)) for k, it in zip(ks, iters, strict=True)]
    dtype, device = like.dtype, like.device
    starts = []
    for _, seed in zip(ks, seeds, strict=True):  # each row's start vector, drawn as alone
        g = torch.Generator(device="cpu").manual_seed(seed)
        starts.append(torch.randn(size, generator=g, dtype=dtype).to(device))
    q = torch.stack(starts)
    q = q / q.norm(dim=1, keepdim=True)
    top = max(ms)
    basis = torch.zeros(n, top, size, dtype=dtype, device=device)
    alpha = torch.zeros(n, top, dtype=dtype, device=device)
    beta = torch.zeros(n, top, dtype=dtype, device=device)
    steps = list(ms)
    rows: list[int] = list(range(n))
    index: Tensor | None = None  # the running rows on the device (None: all, in order)
    at = torch.arange(n, device=device)
    for j in range(top):
        basis[at, j] = q
        w = matvec(q, index)
        alpha[at, j] = (w * q).sum(1)
        done = [j + 1 == ms[r] for r in rows]  # the rows whose last iteration this is
        b = basis[:, : j + 1] if index is None else basis[at, : j + 1]  # a view while all run
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - torch.einsum("rjp,rj->rp", b, torch.einsum("rjp,rp->rj", b, w))
        norm = w.norm(dim=1)
        beta[at, j] = norm  # (a row's last one is not used)
        floor = 1e-10 * alpha[at, : j + 1].abs().amax(1).clamp_min(1e-30)
        broken = (norm <= floor).tolist()  # the one sync of the iteration
        for i, r in enumerate(rows):
            if broken[i] and not done[i]:  # an invariant subspace: this row is complete
                steps[r], done[i] = j + 1, True
        keep = [i for i, d in enumerate(done) if not d]
        if not keep:
            break
        q = w / norm[:, None]
        if len(keep) < len(rows):
            sel = torch.tensor(keep, device=device)
            q, at = q[sel], at[sel]
            rows = [rows[i] for i in keep]
            index = at
    out = []
    for r in range(n):
        m = steps[r]
        t = (
            torch.diag(alpha[r, :m])
            + torch.diag(beta[r, : m - 1], 1)
            + torch.diag(beta[r, : m - 1], -1)
        )
        evals, evecs = torch.linalg.eigh(t)
        order = torch.argsort(evals, descending=True)[: min(ks[r], m)]
        vectors = evecs[:, order].T @ basis[r, :m]
        out.append(Eigen(evals[order], vectors / vectors.norm(dim=1, keepdim=True)))
    return out


@dataclass
class Solve:
    """A CG solution: ``x``, the iterations used and the final relative residual
    ``||b - (A + damping I) x|| / ||b||`` (a device tensor)."""

    x: Tensor
    iters: int
    residual: Tensor
    converged: bool


def conjugate_gradient(
    matvec: MatVec,
    b: Tensor,
    *,
    damping: float = 0.0,
    iters: int = 50,
    tol: float | None = None,
    precond: Tensor | None = None,
) -> Solve:
    """Solve ``(A + damping I) x = b`` by (preconditioned) conjugate gradients.

    With ``tol`` it stops as soon as the relative residual ``||r|| / ||b||`` is at most ``tol``
    (one host sync per iteration) or after ``iters`` iterations, whichever comes first; without
    ``tol`` it runs exactly ``iters`` iterations and never syncs. ``precond`` is the diagonal
    of a preconditioner ``M ~ A + damping I`` (positive entries): the iteration applies ``M^-1``
    to each residual (Jacobi PCG), which changes the path, not the solution. The residual tested
    and returned is that of the unpreconditioned system (CG's recurrence, equal to
    ``b - (A + damping I) x`` up to rounding).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    inv = None if precond is None else 1.0 / precond
    z = r if inv is None else inv * r
    p = z.clone()
    rz = r @ z
    tiny = torch.finfo(b.dtype).tiny
    b_norm = b.norm()
    stop = None if tol is None else (tol * b_norm) ** 2
    used = iters
    converged = False
    for i in range(iters):
        if stop is not None and bool(r @ r <= stop):
            used, converged = i, True
            break
        ap = matvec(p) + damping * p
        step = rz / (p @ ap).clamp_min(tiny)
        x = x + step * p
        r = r - step * ap
        z = r if inv is None else inv * r
        rz_new = r @ z
        p = z + (rz_new / rz.clamp_min(tiny)) * p
        rz = rz_new
    residual = r.norm() / b_norm.clamp_min(tiny)
    if stop is not None and not converged:
        converged = bool(r @ r <= stop)
    return Solve(x, used, residual, converged)


def conjugate_gradients(
    matvec: Callable[[Tensor, Tensor | None], Tensor],
    b: Tensor,
    *,
    damping: Sequence[float],
    iters: Sequence[int],
    tol: Sequence[float],
) -> list[Solve]:
    """K independent solves ``(A_k + damping_k I) x_k = b_k`` at once: ``b`` is [K, P] and
    ``matvec(v, rows)`` maps the vectors ``v`` [R, P] of the systems ``rows`` (a tensor of
    indices, the same object until the set changes; None for all K in order) to their
    products ``A_k v_k``, stacked (one product for all).

    Each row runs :func:`conjugate_gradient`'s iteration (unpreconditioned) and stops where it
    would alone: at relative residual ``tol_k`` or after ``iters_k`` iterations (the sums are
    taken in another order, so a residual within rounding of ``tol_k`` may stop one iteration
    earlier or later; rounding grows on ill-conditioned systems). A row that
    stopped leaves the stacked vectors, so the products (and the vector work) go on for the rows
    still running only. Row ``k`` is the solve of system ``k`` alone, to rounding. One host sync
    per iteration, for all rows together.
    """
    k, dtype, device = b.shape[0], b.dtype, b.device
    tiny = torch.finfo(dtype).tiny
    b_norm = b.norm(dim=1)
    lam = torch.tensor(list(damping), dtype=dtype, device=device)[:, None]
    cap = torch.tensor(list(iters), device=device)
    stop = (torch.tensor(list(tol), dtype=dtype, device=device) * b_norm).square()
    out_x, out_rr = torch.zeros_like(b), torch.zeros(k, dtype=dtype, device=device)
    used, converged = list(iters), [False] * k
    rows: list[int] = list(range(k))  # the systems still running, in the stacked order
    index: Tensor | None = None  # their indices on the device (None: all K)
    x, r, p = torch.zeros_like(b), b.clone(), b.clone()
    rr = (r * r).sum(1)
    for i in range(max(iters) + 1):
        ok = rr <= stop
        flags = torch.stack([ok | (cap <= i), ok]).tolist()  # the one sync of the iteration
        if any(flags[0]):
            keep = [j for j, done in enumerate(flags[0]) if not done]
            for j, (done, reached) in enumerate(zip(*flags, strict=True)):
                if done:
                    used[rows[j]], converged[rows[j]] = i, reached
                    out_x[rows[j]], out_rr[rows[j]] = x[j], rr[j]
            if not keep:
                break
            at = torch.tensor(keep, device=device)
            x, r, p, rr, lam, cap, stop = (t[at] for t in (x, r, p, rr, lam, cap, stop))
            rows = [rows[j] for j in keep]
            index = torch.tensor(rows, device=device)
        ap = matvec(p, index) + lam * p
        step = (rr / (p * ap).sum(1).clamp_min(tiny))[:, None]
        x = x + step * p
        r = r - step * ap
        rr_new = (r * r).sum(1)
        p = r + (rr_new / rr.clamp_min(tiny))[:, None] * p
        rr = rr_new
    residual = out_rr.sqrt() / b_norm.clamp_min(tiny)
    return [Solve(out_x[j].clone(), used[j], residual[j], converged[j]) for j in range(k)]


def jacobi(diag: Tensor, damping: float) -> Tensor:
    """A Jacobi preconditioner for ``A + damping I`` from an estimate of ``diag(A)``.

    Hutchinson estimates can be negative or noisy; they are clipped at zero so every entry is at
    least ``damping`` and the preconditioned system stays positive definite.
    """
    return diag.clamp_min(0.0) + damping


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
