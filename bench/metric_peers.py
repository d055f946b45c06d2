"""The same Fisher/GGN-vector product from fipframe and from its peers, side by side in one run.

For the softmax output, fipframe's KL metric ``g = mean_x J^T H J`` (``H = diag(p) - p p^T``)
is the GGN of the mean cross-entropy and the Fisher information of the model's predictive
distribution, whatever the labels. On the same model, the same 128 MNIST test images and the
same random vector ``v``, this computes ``g v`` with

- fipframe: ``Metric.mvp`` of ``kl``, in each product mode (forward, fused, reverse);
- curvlinops: ``GGNLinearOperator`` with ``CrossEntropyLoss(reduction="mean")``;
- nngeometry: ``FIM(..., PMatImplicit, variant="classif_logits")`` and its ``mv``;

checks that every result agrees with fipframe's forward mode (relative difference of the
vectors), and prints the median time of each, interleaved round by round, with its ratio to
the fastest peer. A peer that does not support a model (nngeometry knows a fixed set of layer
types) is shown as such; where curvlinops fails on attention (no forward-mode rule for the fused
attention kernel), it is also run inside ``fipframe.core.functional.composite_attention``, the
switch to the differentiable kernels that fipframe's own products use. Needs the ``peers``
extra: ``pip install -e ".[peers]"``.

Usage: python bench/metric_peers.py [--reps 20] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from metric_cost import model as build_model  # noqa: E402  (MLP, small CNN, small ViT)

from fipframe.builtin.metrics import KL, KLConfig  # noqa: E402
from fipframe.core.functional import composite_attention  # noqa: E402
from fipframe.core.params import ParamSpace  # noqa: E402
from fipframe.data.mnist import load_mnist  # noqa: E402

MODELS = {"mlp": "MLP 784-400-400-10", "cnn": "small CNN", "vit": "small ViT (2 layers)"}


def fipframe_product(module, x, v, mode):
    metric = KL(KLConfig(product=mode))
    params = {n: p.detach() for n, p in module.named_parameters()}

    def forward(p):
        return torch.func.functional_call(module, p, (x,))

    return lambda: metric.mvp(forward, params, v)


def curvlinops_product(module, x, v):
    from curvlinops import GGNLinearOperator

    params = [p for _, p in module.named_parameters()]
    y = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # the GGN ignores labels
    op = GGNLinearOperator(
        module, torch.nn.CrossEntropyLoss(reduction="mean"), params, [(x, y)],
        check_deterministic=False, progressbar=False,
    )  # fmt: skip
    names = [n for n, _ in module.named_parameters()]
    flat = torch.cat([v[n].reshape(-1) for n in names])

    def run():
        out = op @ flat
        return dict(zip(names, _split(out, [v[n] for n in names]), strict=True))

    return run


def _split(flat, like):
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def nngeometry_product(module, x, v):
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatImplicit
    from nngeometry.object.vector import PVector

    lc = LayerCollection.from_model(module)  # raises on layer types it does not know
    covered = {f"{lid}.{k}" for lid, layer in lc.layers.items() for k in ("weight", "bias")
               if k == "weight" or layer.bias is not None}  # fmt: skip
    missing = [n for n, _ in module.named_parameters() if n not in covered]
    if missing:
        raise NotImplementedError(f"parameters outside its layer types: {missing[:3]}")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=x.shape[0])
    fim = FIM(module, loader, PMatImplicit, variant="classif_logits", device=str(x.device))
    dict_repr = {
        lid: (v[f"{lid}.weight"],) + ((v[f"{lid}.bias"],) if layer.bias is not None else ())
        for lid, layer in lc.layers.items()
    }
    pv = PVector(lc, dict_repr=dict_repr)

    def run():
        out = fim.mv(pv).to_dict()
        res = {}
        for lid, parts in out.items():
            res[f"{lid}.weight"] = parts[0]
            if len(parts) > 1:
                res[f"{lid}.bias"] = parts[1]
        return res

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, device {device}, {args.reps} reps"
    )
    _, _, test = load_mnist()
    x = test.x[:128].to(device)
    for key, title in MODELS.items():
        torch.manual_seed(0)
        module = build_model(key).model.to(device).eval()
        params = {n: p.detach() for n, p in module.named_parameters()}
        space = ParamSpace.of(params)
        v = {n: torch.randn_like(p) for n, p in params.items()}
        runs = {
            f"fipframe {m}": fipframe_product(module, x, v, m)
            for m in ("forward", "fused", "reverse")
        }  # noqa: E501
        unsupported = {}
        for name, make in (("curvlinops", curvlinops_product), ("nngeometry", nngeometry_product)):
            try:
                runs[name] = make(module, x, v)
                runs[name]()  # a first call: fails here if the peer cannot do this model
            except Exception as exc:  # noqa: BLE001  (a peer's limits are reported, not fatal)
                runs.pop(name, None)
                unsupported[name] = f"{type(exc).__name__}: {str(exc)[:80]}"
                if name == "curvlinops":  # with the attention kernels fipframe switches to
                    inner = make(module, x, v)

                    def composite(f=inner):
                        with composite_attention():
                            return f()

                    runs["curvlinops (math attn)"] = composite
        ref = space.flatten(runs["fipframe forward"]())
        agree = {
            n: (space.flatten({k: r[k] for k in params}) - ref).norm().item() / ref.norm().item()
            for n, f in runs.items()
            for r in [f()]
        }
        times = {n: [] for n in runs}
        for _ in range(args.reps):  # interleaved: drift hits every library alike
            for n, f in runs.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                f()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[n].append(time.perf_counter() - t)
        med = {n: 1000 * statistics.median(ts) for n, ts in times.items()}
        peers = [med[n] for n in med if not n.startswith("fipframe")]
        fastest_peer = min(peers) if peers else None
        print(f"\n{title}: {space.size:,} parameters, 128 inputs")
        print(f"  {'':<24} {'ms':>8} {'/ fastest peer':>15} {'rel. diff to fipframe forward':>30}")
        for n in runs:
            ratio = f"{med[n] / fastest_peer:.2f}" if fastest_peer else "-"
            print(f"  {n:<24} {med[n]:>8.2f} {ratio:>15} {agree[n]:>30.1e}")
        for n, why in unsupported.items():
            print(f"  {n:<24} not run: {why}")
        wrong = [n for n, d in agree.items() if d > 1e-4]
        if wrong:  # a timing of a different product is no comparison
            raise SystemExit(f"{title}: {', '.join(wrong)} disagree with fipframe (> 1e-4)")


if __name__ == "__main__":
    main()
