"""Lanczos, CG, Hutchinson and the exact diagonal against dense float64 references."""

from __future__ import annotations

import pytest
import torch

from fipframe.core.functional import dense_metric
from fipframe.core.linalg import (
    conjugate_gradient,
    conjugate_gradients,
    hutchinson_diag,
    hutchinson_trace,
    jacobi,
    lanczos,
    lanczos_paths,
    participation_ratio,
)
from fipframe.plugins import make_plugin_manager
from fipframe.testing import tiny_models

REGISTRY = make_plugin_manager().registry


def psd(n: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank, generator=g, dtype=torch.float64)
    scales = torch.logspace(0, -3, rank, dtype=torch.float64)
    return (a * scales) @ a.T


def test_lanczos_matches_eigh_on_a_low_rank_operator():
    a = psd(80, 12)
    eig = lanczos(lambda v: a @ v, 80, 6, like=a)
    want = torch.linalg.eigvalsh(a).flip(0)[:6]
    torch.testing.assert_close(eig.values, want, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(
        eig.vectors @ eig.vectors.T, torch.eye(6, dtype=a.dtype), atol=1e-8, rtol=0
    )
    for lam, v in zip(eig.values, eig.vectors, strict=True):
        torch.testing.assert_close(a @ v, lam * v, atol=1e-8, rtol=0)
    g = torch.randn(80, dtype=a.dtype)
    assert eig.captured(eig.project_out(g)).item() < 1e-20


@pytest.mark.parametrize("kind", ["kl", "bhattacharyya", "l2"])
def test_lanczos_on_the_metric_finds_its_top_eigenvalues(kind):
    _, forward, params = next(tiny_models())
    spec = REGISTRY.spec("metric", kind)
    metric = spec.factory(spec.config())
    dense = dense_metric(forward, params, lambda q, r: metric.divergence(q, metric.reference(r)))
    size = dense.shape[0]
    eig = lanczos(metric.operator(forward, params), size, 5, like=dense, iters=size)
    torch.testing.assert_close(
        eig.values, torch.linalg.eigvalsh(dense).flip(0)[:5], rtol=1e-7, atol=1e-10
    )
    rank = torch.linalg.matrix_rank(dense, hermitian=True, rtol=1e-10).item()
    assert rank <= 5 * 4  # at most samples x outputs: the null space is where FIP moves


def test_conjugate_gradient_solves_the_damped_system():
    a = psd(50, 10)
    b = torch.randn(50, dtype=a.dtype)
    want = torch.linalg.solve(a + 0.1 * torch.eye(50, dtype=a.dtype), b)
    solve = conjugate_gradient(lambda v: a @ v, b, damping=0.1, iters=200, tol=1e-12)
    torch.testing.assert_close(solve.x, want)
    assert solve.converged and solve.iters < 200 and solve.residual.item() <= 1e-12
    fixed = conjugate_gradient(lambda v: a @ v, b, damping=0.1, iters=30)
    assert fixed.iters == 30 and torch.allclose(fixed.x, want, atol=1e-6)
    # the reported residual is the true one of the damped system (before rounding dominates)
    early = conjugate_gradient(lambda v: a @ v, b, damping=0.1, iters=4)
    true = (b - (a @ early.x + 0.1 * early.x)).norm() / b.norm()
    assert early.residual.item() == pytest.approx(true.item(), rel=1e-6)
    assert early.residual.item() > 1e-3
    # stopped by the cap before the tolerance: not converged, residual above it
    short = conjugate_gradient(lambda v: a @ v, b, damping=0.1, iters=3, tol=1e-12)
    assert not short.converged and short.iters == 3 and short.residual.item() > 1e-12


def test_stacked_cg_stops_each_system_where_it_stops_alone():
    """Lockstep paths solve K systems together; each row must be its solve alone: the same
    iterate, iteration count, residual and converged flag, with its own damping, tolerance
    and cap (row 2 is cut by its cap, row 3 converges at once on b = 0)."""
    # eigenvalues spread evenly over [0, 1], no clusters: CG's iterates are stable to rounding
    # (near-equal eigenvalues or a large condition number amplify the rounding of different
    # but equivalent arithmetic until iterates and counts differ, by about the tolerance)
    g = torch.Generator().manual_seed(5)
    ops = []
    for _ in range(4):
        q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
        ops.append(q @ torch.diag(torch.linspace(0, 1, 40, dtype=torch.float64)) @ q.T)
    b = torch.randn(4, 40, generator=g, dtype=torch.float64)
    b[3] = 0.0
    damping, tol, iters = [0.1, 0.3, 0.05, 0.1], [1e-10, 1e-6, 1e-12, 1e-8], [200, 300, 5, 50]
    asked: list[list[int]] = []

    def matvec(v, rows):
        rows = list(range(4)) if rows is None else rows.tolist()
        asked.append(rows)
        return torch.stack([ops[j] @ vk for j, vk in zip(rows, v, strict=True)])

    together = conjugate_gradients(
        matvec,
        b,
        damping=damping,
        iters=iters,
        tol=tol,
    )
    for a, bk, lam, t, cap, got in zip(ops, b, damping, tol, iters, together, strict=True):
        want = conjugate_gradient(lambda v, a=a: a @ v, bk, damping=lam, iters=cap, tol=t)
        assert (got.iters, got.converged) == (want.iters, want.converged)
        torch.testing.assert_close(got.x, want.x, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.residual, want.residual, rtol=1e-6, atol=1e-12)
    assert [s.converged for s in together] == [True, True, False, True]
    assert together[2].iters == 5 and together[3].iters == 0
    assert 0 < together[1].iters < together[0].iters  # each stopped at its own count
    # products only for the rows still running: each row's own count of them
    assert [sum(j in a for a in asked) for j in range(4)] == [s.iters for s in together]


def test_stacked_lanczos_gives_each_operator_its_own_eigenpairs():
    """Lockstep paths' projected steps run Lanczos on K operators together; each row must be
    its run alone: its own k, iteration count and start vector, and a row that reaches an
    invariant subspace (rank 6, at 7 iterations) leaves the stack there, also where that is
    its last iteration anyway (row 3)."""
    low = psd(50, 6, seed=2)
    ops = [psd(50, 50, seed=1), low, psd(50, 50, seed=3), low]
    ks, iters, seeds = [4, 3, 6, 3], [None, None, 40, 7], [0, 7, 3, 1]
    asked: list[list[int]] = []

    def matvec(v, rows):
        rows = list(range(4)) if rows is None else rows.tolist()
        asked.append(rows)
        return torch.stack([ops[j] @ vk for j, vk in zip(rows, v, strict=True)])

    together = lanczos_paths(matvec, 50, ks, iters=iters, seeds=seeds, like=ops[0])
    for j, (a, k, it, seed, got) in enumerate(zip(ops, ks, iters, seeds, together, strict=True)):
        calls = []

        def alone_mv(v, a=a, calls=calls):
            calls.append(1)
            return a @ v

        want = lanczos(alone_mv, 50, k, iters=it, like=a, seed=seed)
        torch.testing.assert_close(got.values, want.values, rtol=1e-10, atol=1e-12)
        # the eigenspaces (projectors), which is what the projected step uses
        torch.testing.assert_close(
            got.vectors.T @ got.vectors, want.vectors.T @ want.vectors, rtol=0, atol=1e-8
        )
        assert sum(j in a for a in asked) == len(calls)  # its products: as many as alone
    assert [sum(j in a for a in asked) for j in range(4)] == [30, 7, 40, 7]


def test_jacobi_preconditioned_cg_reaches_the_same_solution_in_fewer_iterations():
    # badly scaled diagonal: what a Jacobi preconditioner is for
    g = torch.Generator().manual_seed(3)
    scales = torch.logspace(0, 4, 60, dtype=torch.float64)
    a = torch.diag(scales) + psd(60, 5, seed=1)
    b = torch.randn(60, generator=g, dtype=torch.float64)
    want = torch.linalg.solve(a + 1e-3 * torch.eye(60, dtype=a.dtype), b)
    plain = conjugate_gradient(lambda v: a @ v, b, damping=1e-3, iters=500, tol=1e-10)
    pre = conjugate_gradient(
        lambda v: a @ v, b, damping=1e-3, iters=500, tol=1e-10, precond=jacobi(a.diagonal(), 1e-3)
    )
    torch.testing.assert_close(pre.x, want, rtol=1e-7, atol=1e-12)
    assert pre.converged and plain.converged and pre.iters < plain.iters / 2
    # negative diagonal estimates (Hutchinson noise) are clipped to the damping
    assert jacobi(torch.tensor([-1.0, 2.0]), 0.5).tolist() == [0.5, 2.5]


def test_hutchinson_estimates_are_unbiased():
    a = psd(30, 30)
    diag = hutchinson_diag(lambda v: a @ v, 30, 4000, like=a)
    assert torch.allclose(diag, a.diagonal(), atol=0.15 * a.diagonal().abs().max())
    trace = hutchinson_trace(lambda v: a @ v, 30, 4000, like=a)
    assert trace.item() == pytest.approx(a.trace().item(), rel=0.05)


@pytest.mark.parametrize("model", list(tiny_models()), ids=lambda m: m[0])
def test_exact_diagonal_matches_the_dense_metric(model):
    _, forward, params = model
    for kind in ("kl", "l2", "tempered_kl"):
        spec = REGISTRY.spec("metric", kind)
        metric = spec.factory(spec.config())
        dense = dense_metric(
            forward, params, lambda q, r, m=metric: m.divergence(q, m.reference(r))
        )
        torch.testing.assert_close(metric.diag(forward, params), dense.diagonal())


def test_participation_ratio():
    assert participation_ratio(torch.tensor([1.0, 1.0, 1.0, 1.0])).item() == pytest.approx(4.0)
    assert participation_ratio(torch.tensor([1.0, 0.0, 0.0])).item() == pytest.approx(1.0)
