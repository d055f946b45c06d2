"""Cost of a metric-vector product against a gradient of the same loss, and of Lanczos.

For each model (MLP 784-400-400-10, small CNN, small vision transformer) on a batch of 128
MNIST-shaped inputs, side by side in one run:

- time: median of a KL metric-vector product ``g v`` (jvp + output Hessian + vjp) divided by the
  median of a gradient of the KL divergence to the anchor outputs (forward + backward), for
  each way fipframe computes ``J v`` (metric field ``product``: forward, fused, reverse);
- peak memory: growth of live tensor memory during one call (the profiler's memory timeline on
  CPU, ``max_memory_allocated`` on CUDA).

Then Lanczos for the top 20 eigenpairs of ``g`` on 64 stored inputs of a CNN with about one
million parameters.

Usage: python bench/metric_cost.py [--device cpu|cuda] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from fipframe.builtin.adapters import MLPConfig, SmallCNNConfig, build_mlp, build_small_cnn
from fipframe.builtin.metrics import KL, KLConfig
from fipframe.core.adapter import ArchitectureAdapter
from fipframe.core.functional import PRODUCT_MODES as MODES
from fipframe.core.linalg import lanczos
from fipframe.core.params import ParamSpace


def transformer() -> ArchitectureAdapter:
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(
        image_size=28,
        patch_size=7,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    )
    vit.conv_proj = nn.Conv2d(1, 64, kernel_size=7, stride=7)
    return ArchitectureAdapter(vit)


def model(name: str) -> ArchitectureAdapter:
    shape = (1, 28, 28)
    if name == "mlp":
        return build_mlp(MLPConfig(), input_shape=shape, num_classes=10)
    if name == "cnn":
        return build_small_cnn(SmallCNNConfig(), input_shape=shape, num_classes=10)
    if name == "cnn-1m":
        return build_small_cnn(
            SmallCNNConfig(channels=[64, 128], hidden=160), input_shape=shape, num_classes=10
        )
    return transformer()


def setup(name: str, device: torch.device, batch: int = 128):
    torch.manual_seed(0)
    adapter = model(name).to(device)
    params = adapter.params()
    x = torch.randn(batch, 1, 28, 28, device=device)
    metric = KL(KLConfig())
    ref = metric.reference(adapter.forward(params, x))
    # a point a little away from the anchor, so the divergence has a real gradient
    point = {k: v + 1e-2 * torch.randn_like(v) for k, v in params.items()}
    v = {k: torch.randn_like(t) for k, t in params.items()}

    def forward(p):
        return adapter.forward(p, x)

    def gradient():
        leaves = [t.detach().requires_grad_(True) for t in point.values()]
        p = dict(zip(point, leaves, strict=True))
        loss = metric.divergence(forward(p), ref).mean()
        return torch.autograd.grad(loss, leaves)

    def product(mode):
        m = KL(KLConfig(product=mode))
        return lambda: m.mvp(forward, point, v)

    return adapter, params, {"gradient": gradient, **{m: product(m) for m in MODES}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_kib(fn, device: torch.device) -> int:
    """Peak growth of live tensor memory during one call of ``fn`` (after a warm-up call).

    CUDA: ``max_memory_allocated``. CPU: the profiler's memory timeline, which follows every
    tensor allocation and free (resident-set sizes are useless here: the allocator keeps and
    returns pages on its own schedule).
    """
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) // 1024
    import os
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof.export_memory_timeline(path, device="cpu")
    with open(path) as f:
        _, sizes = json.load(f)
    os.unlink(path)
    totals = [sum(x) for x in sizes]
    return (max(totals) - totals[0]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    dev = torch.device(args.device)
    print(
        f"# metric_cost: device {dev}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, batch 128, KL metric"
    )
    print("ratios of g v to a gradient, per product mode: time x / memory x")
    print(
        f"{'model':<12}{'params':>10}{'grad ms':>9}{'grad KiB':>10}"
        + "".join(f"{m:>16}" for m in MODES)
    )
    for name in ("mlp", "cnn", "transformer"):
        adapter, params, ops = setup(name, dev)
        size = ParamSpace.of(params).size
        times: dict[str, list[float]] = {k: [] for k in ops}
        for r in range(args.reps + 3):
            for op, fn in ops.items():
                sync(dev)
                t0 = time.perf_counter()
                fn()
                sync(dev)
                if r >= 3:
                    times[op].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        mem = {op: peak_kib(fn, dev) for op, fn in ops.items()}
        g_ms, g_kib = med["gradient"], max(mem["gradient"], 1)
        cells = "".join(f"{f'{med[m] / g_ms:.2f} / {mem[m] / g_kib:.2f}':>16}" for m in MODES)
        print(f"{name:<12}{size:>10,}{g_ms:>9.2f}{mem['gradient']:>10,}{cells}", flush=True)
    adapter = model("cnn-1m").to(dev)
    params = adapter.params()
    x = torch.randn(64, 1, 28, 28, device=dev)
    metric = KL(KLConfig())
    size = ParamSpace.of(params).size
    op = metric.operator(lambda p: adapter.forward(p, x), params)
    flat = ParamSpace.of(params).flatten(params)
    sync(dev)
    t0 = time.perf_counter()
    eig = lanczos(op, size, 20, like=flat)
    sync(dev)
    took = time.perf_counter() - t0
    print(
        f"lanczos k=20 (50 products), CNN with {size:,} parameters, 64 inputs: {took:.1f} s "
        f"(target < 60 s); top eigenvalues {eig.values[0].item():.3g} .. "
        f"{eig.values[-1].item():.3g}"
    )


if __name__ == "__main__":
    main()
