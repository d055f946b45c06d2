"""Matrix-free products with the pullback metric (forward-mode autograd and torch.func).

The metric at weights ``w`` on inputs ``X`` is ``g(w) = mean_x J_x^T H_x J_x`` where
``J_x = df(x; w)/dw`` and ``H_x`` is the Hessian of the output divergence ``D(z, f(x; w))`` in
``z`` at zero displacement. ``g`` and ``J`` are never materialised: ``g v`` is one jvp, one
output-space Hessian-vector product and one vjp (:func:`metric_vp`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Literal, get_args

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from fipframe.core.params import Params

ProductMode = Literal["forward", "fused", "reverse"]
PRODUCT_MODES: tuple[str, ...] = get_args(ProductMode)
Divergence = Callable[[Tensor, Tensor], Tensor]  # (logits, reference logits) -> per-sample D


@functools.cache
def _load_forward_decompositions() -> None:
    """Load torch's forward-AD decompositions once, quietly.

    torch loads them on the first ``make_dual`` of a process, through ``torch.jit.script``,
    whose deprecation warning would reach every user of the forward products; loading them
    here, inside a filter, keeps that internal warning out of their output.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with contextlib.suppress(ImportError):  # a private module: absent in some builds
            from torch._decomp import decompositions_for_jvp  # noqa: F401


def divergence_hvp(divergence: Divergence, z: Tensor, u: Tensor) -> Tensor:
    """``H u`` per sample, with ``H`` the Hessian of ``z' -> D(z', z)`` at ``z' = z``.

    Works for any twice-differentiable divergence through forward-over-reverse autodiff;
    metrics with a closed form override :meth:`fipframe.core.Metric.output_hvp`.
    """
    ref = z.detach()

    def grad_d(zz: Tensor) -> Tensor:
        return torch.func.grad(lambda q: divergence(q, ref).sum())(zz)

    return torch.func.jvp(grad_d, (ref,), (u,))[1]


@contextlib.contextmanager
def composite_attention() -> Iterator[None]:
    """Attention through composite (differentiable) kernels inside function transforms.

    The fused flash and memory-efficient kernels have no forward-mode derivative (dual numbers
    through a transformer fail with them) and no vmap rule for their backward (``jacrev``
    falls back to a slow loop); neither has ``nn.MultiheadAttention``'s inference fast path,
    which it takes in eval mode without gradients. Both are switched off inside; the math
    kernel costs more memory on long sequences.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mha = torch.backends.mha
    fast = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        mha.set_fastpath_enabled(fast)


def metric_vp(
    forward: Callable[[Params], Tensor],
    params: Params,
    v: Params,
    output_hvp: Callable[[Tensor, Tensor], Tensor],
    mode: ProductMode = "forward",
    paths: bool = False,
) -> Params:
    """``g v = mean_x J_x^T H_x J_x v`` for ``forward(params) -> logits [N, ...]``.

    With ``paths``, the leading axis of ``params``, ``v`` and the outputs ``[K, N, ...]`` is a
    path axis (lockstep paths, ``forward`` vmapped over it): each path's product with its own
    vector, ``g_k v_k``, for all K in one pass.

    Three ways to get ``J v``, all matrix-free (docs/benchmarks.md has their costs):

    - ``"forward"``: a forward pass on dual numbers (``torch.autograd.forward_ad``) under
      ``no_grad`` gives ``J v`` and frees everything it made; then a forward with a graph and
      the pullback ``J^T (H J v)``. Peak memory about that of a gradient.
    - ``"fused"``: one dual forward that also records the graph for the pullback. Fastest, but
      the graph keeps the tangent computations too (about 3.5x a gradient's memory through
      attention).
    - ``"reverse"``: the double-backward identity ``J v = d/du <J^T u, v>`` (``J^T u`` is linear
      in ``u``): one forward, a backward with ``create_graph``, its backward, and the pullback.
      No forward-mode rules needed (for custom ops that lack them).

    ``torch.func.jvp`` is not used: a product built on it measured 2.4-9.7x a gradient's memory
    (docs/design.md).

    Args:
        forward: maps weights to the outputs on a fixed input set (first dim = samples).
        params: the point ``w``.
        v: tangent vector, same structure as ``params``.
        output_hvp: ``(z, u) -> H u`` per sample in output space.
        mode: ``"forward"``, ``"fused"`` or ``"reverse"``.
    """
    if mode not in PRODUCT_MODES:
        raise ValueError(f"mode must be one of {', '.join(PRODUCT_MODES)}; got {mode!r}")
    if mode != "reverse":
        _load_forward_decompositions()
    if paths:  # under vmap a module cannot see that its weights need gradients
        with composite_attention():
            return _metric_vp(forward, params, v, output_hvp, mode, paths)
    return _metric_vp(forward, params, v, output_hvp, mode, paths)


def _metric_vp(
    forward: Callable[[Params], Tensor],
    params: Params,
    v: Params,
    output_hvp: Callable[[Tensor, Tensor], Tensor],
    mode: ProductMode,
    paths: bool,
) -> Params:
    names = list(params.keys())
    leaves = [p.detach().requires_grad_(True) for p in params.values()]
    if mode == "forward":
        with composite_attention(), torch.no_grad(), fwAD.dual_level():
            dual = {n: fwAD.make_dual(p.detach(), v[n]) for n, p in params.items()}
            jv = fwAD.unpack_dual(forward(dual)).tangent
            del dual
        with torch.enable_grad():  # the pullback may use the fused attention kernels
            out = forward(dict(zip(names, leaves, strict=True)))
    elif mode == "fused":
        with composite_attention(), torch.enable_grad(), fwAD.dual_level():
            dual = {n: fwAD.make_dual(x, v[n]) for n, x in zip(names, leaves, strict=True)}
            out, jv = fwAD.unpack_dual(forward(dual))
            jv = jv.detach()  # drops the tangent's own graph before the pullback
            del dual
    else:
        with composite_attention(), torch.enable_grad():
            out = forward(dict(zip(names, leaves, strict=True)))
            u = torch.zeros_like(out, requires_grad=True)
            jtu = torch.autograd.grad(out, leaves, u, create_graph=True, allow_unused=True)
            used = [(g, v[n]) for n, g in zip(names, jtu, strict=True) if g is not None]
            (jv,) = torch.autograd.grad([g for g, _ in used], u, [t for _, t in used])
            del jtu, used, u
    z, jv = out.detach(), jv.detach()
    if paths:  # per sample over every path's samples; the mean over each path's own
        hu = output_hvp(z.flatten(0, 1), jv.flatten(0, 1)).view_as(z) / z.shape[1]
    else:
        hu = output_hvp(z, jv) / z.shape[0]
    # a plain one-shot pullback (a backward pass: the attention kernel choice was made when the
    # graph was recorded): torch.func.vjp keeps its graph for repeated pullbacks, which
    # measured 1.2-2x more peak memory
    grads = torch.autograd.grad(out, leaves, hu, allow_unused=True)
    return {
        n: torch.zeros_like(p) if g is None else g
        for (n, p), g in zip(params.items(), grads, strict=True)
    }


def dense_metric(
    forward: Callable[[Params], Tensor],
    params: Params,
    divergence: Divergence,
) -> Tensor:
    """Dense ``mean_x J_x^T H_x J_x`` as a [P, P] matrix. A test oracle for tiny models only."""
    from fipframe.core.params import ParamSpace

    space = ParamSpace.of(params)
    flat = space.flatten(params)

    def f(w: Tensor) -> Tensor:
        return forward(space.unflatten(w))

    z = f(flat).detach()
    with composite_attention():
        jac = torch.func.jacrev(f)(flat).reshape(z.shape[0], -1, flat.numel())  # [N, C, P]
    zf = z.reshape(z.shape[0], -1)

    def d_one(zi: Tensor, ri: Tensor) -> Tensor:
        return divergence(zi.reshape((1,) + z.shape[1:]), ri.reshape((1,) + z.shape[1:])).sum()

    hess = torch.stack(
        [torch.func.hessian(d_one)(zf[i], zf[i]) for i in range(zf.shape[0])]
    )  # [N, C, C]
    return torch.einsum("ncp,ncd,ndq->pq", jac, hess, jac) / z.shape[0]
