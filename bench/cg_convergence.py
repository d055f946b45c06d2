"""How many CG iterations the natural step needs, and whether a Jacobi preconditioner pays.

The benchmark network (MLP 784-400-400-10 after 500 Adam steps on digits 0-4, real MNIST), 128
stored images of 0-4, KL metric, the gradient of cross-entropy on 128 images of 5-9. For each
damping: a reference solve to 1e-6, then CG to relative residual 0.1 / 0.03 / 0.01 with no
preconditioner and with Jacobi from a Hutchinson diagonal of 8 or 32 metric-vector products;
iterations, residual reached, cosine to the reference and wall time, side by side in one run.

Usage: python bench/cg_convergence.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from fipframe.builtin.metrics import KL, KLConfig
from fipframe.core.linalg import conjugate_gradient, hutchinson_diag, jacobi
from fipframe.core.params import ParamSpace
from fipframe.testing import first_task_mlp


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    adapter, stored, xn, yn = first_task_mlp(steps=500)
    params = adapter.params()
    space = ParamSpace.of(params)
    g = KL(KLConfig()).operator(lambda p: adapter.forward(p, stored), params)
    i = torch.randint(0, len(xn), (128,))
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    loss = F.cross_entropy(adapter.forward(leaves, xn[i]), yn[i])
    grads = torch.autograd.grad(loss, list(leaves.values()))
    b = space.flatten(dict(zip(leaves, grads, strict=True)))
    g(b)  # warm-up
    t = time.perf_counter()
    g(b)
    print(f"one metric-vector product: {1e3 * (time.perf_counter() - t):.1f} ms")
    print("damping | preconditioner | tol | iterations | residual | cos to reference | s")
    for damping in (1e-3, 1e-2, 1e-1):
        ref = conjugate_gradient(g, b, damping=damping, iters=2000, tol=1e-6)
        print(f"{damping:g} | reference | 1e-6 | {ref.iters} | {ref.residual.item():.1e} | 1 | -")
        for samples in (0, 8, 32):
            pre = None
            if samples:
                pre = jacobi(hutchinson_diag(g, space.size, samples, like=b), damping)
            name = f"jacobi ({samples} products)" if samples else "none"
            for tol in (1e-1, 3e-2, 1e-2):
                t = time.perf_counter()
                s = conjugate_gradient(g, b, damping=damping, iters=2000, tol=tol, precond=pre)
                wall = time.perf_counter() - t
                cos = (s.x @ ref.x / (s.x.norm() * ref.x.norm())).item()
                print(
                    f"{damping:g} | {name} | {tol:g} | {s.iters} | {s.residual.item():.3f} | "
                    f"{cos:.4f} | {wall:.2f}"
                )


if __name__ == "__main__":
    main()
