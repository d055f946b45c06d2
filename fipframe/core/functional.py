"""Matrix-free products with the pullback metric, built on torch.func.

The metric at weights ``w`` on inputs ``X`` is ``g(w) = mean_x J_x^T H_x J_x`` where
``J_x = df(x; w)/dw`` and ``H_x`` is the Hessian of the output divergence ``D(z, f(x; w))`` in
``z`` at zero displacement. ``g`` and ``J`` are never materialised: ``g v`` is one jvp, one
output-space Hessian-vector product and one vjp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fipframe.core.params import Params

Divergence = Callable[[Tensor, Tensor], Tensor]  # (logits, reference logits) -> per-sample D


def divergence_hvp(divergence: Divergence, z: Tensor, u: Tensor) -> Tensor:
    """``H u`` per sample, with ``H`` the Hessian of ``z' -> D(z', z)`` at ``z' = z``.

    Works for any twice-differentiable divergence through forward-over-reverse autodiff;
    metrics with a closed form override :meth:`fipframe.core.Metric.output_hvp`.
    """
    ref = z.detach()

    def grad_d(zz: Tensor) -> Tensor:
        return torch.func.grad(lambda q: divergence(q, ref).sum())(zz)

    return torch.func.jvp(grad_d, (ref,), (u,))[1]


def composite_attention() -> Any:
    """Attention through the composite (math) kernel inside function transforms.

    The fused flash and memory-efficient kernels have no forward-mode derivative (``jvp``
    through a transformer fails with them) and no vmap rule for their backward (``jacrev``
    falls back to a slow loop). The math kernel costs more memory on long sequences.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def metric_vp(
    forward: Callable[[Params], Tensor],
    params: Params,
    v: Params,
    output_hvp: Callable[[Tensor, Tensor], Tensor],
    mode: str = "reverse",
) -> Params:
    """``g v = mean_x J_x^T H_x J_x v`` for ``forward(params) -> logits [N, ...]``.

    Two ways to get ``J v``, both matrix-free (docs/benchmarks.md has their costs):

    - ``"reverse"``: the double-backward identity ``J v = d/du <J^T u, v>`` (``J^T u`` is linear
      in ``u``), all in reverse mode: one forward, a backward with ``create_graph``, its
      backward, and the final pullback. Lowest peak memory.
    - ``"forward"``: ``torch.func.jvp`` (forward-mode AD), then the pullback. A little faster,
      but forward mode holds more memory through convolutions and attention.

    Args:
        forward: maps weights to the outputs on a fixed input set (first dim = samples).
        params: the point ``w``.
        v: tangent vector, same structure as ``params``.
        output_hvp: ``(z, u) -> H u`` per sample in output space.
        mode: ``"reverse"`` or ``"forward"``.
    """
    names = list(params.keys())
    leaves = [p.detach().requires_grad_(True) for p in params.values()]
    with composite_attention(), torch.enable_grad():
        if mode == "forward":
            z, jv = torch.func.jvp(forward, (params,), (v,))
            out = forward(dict(zip(names, leaves, strict=True)))
        elif mode == "reverse":
            out = forward(dict(zip(names, leaves, strict=True)))
            u = torch.zeros_like(out, requires_grad=True)
            jtu = torch.autograd.grad(out, leaves, u, create_graph=True, allow_unused=True)
            used = [(g, v[n]) for n, g in zip(names, jtu, strict=True) if g is not None]
            (jv,) = torch.autograd.grad([g for g, _ in used], u, [t for _, t in used])
            del jtu, used, u
        else:
            raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
        hu = output_hvp(out.detach(), jv.detach()) / out.shape[0]
        # a plain one-shot pullback: torch.func.vjp keeps its graph for repeated pullbacks,
        # which measured 1.2-2x more peak memory
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
