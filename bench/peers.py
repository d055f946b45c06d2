"""Side by side with Avalanche: its Naive, EWC and Replay on fipframe's Split-MNIST tensors.

Same data (the split_mnist tasks, already normalised), same MLP (784-400-400-10), same Adam
1e-3, batch 128, about the same number of steps per task (whole epochs, so the nearest count),
memory 500. The fipframe rows are read from ``runs/continual.json`` (written by
``bench/continual.py``) when they are there, else run here. Needs the ``peers`` extra:
``pip install -e ".[peers]"``.

Usage: python bench/peers.py [--seeds 0 1 2] [--out docs/results/peers.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import continual  # noqa: E402  (the fipframe side's settings)

PAIRS = {"Naive": "fine-tuning", "EWC": "EWC", "Replay": "ER"}


def split_mnist(seed: int):
    from fipframe.plugins import make_plugin_manager

    pm = make_plugin_manager()
    data = continual.SEQUENCES["split"]["data"]
    cfg = pm.registry.spec("dataset", data["kind"]).config(**data)
    return pm.registry.build("dataset", cfg, seed=seed)


def avalanche_run(name: str, seed: int, steps: int, memory: int, ewc_lambda: float) -> dict:
    from avalanche.benchmarks.scenarios.deprecated.generic_benchmark_creation import (
        create_generic_benchmark_from_tensor_lists,
    )
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import EWC, Naive, Replay

    from fipframe.builtin.adapters import mlp

    seq = split_mnist(seed)
    bench = create_generic_benchmark_from_tensor_lists(
        train_tensors=[(t.train.x, t.train.y) for t in seq.tasks],
        test_tensors=[(t.test.x, t.test.y) for t in seq.tasks],
        task_labels=[0] * len(seq.tasks),
    )
    torch.manual_seed(seed)
    model = mlp(784, [400, 400], 10)
    epochs = max(1, round(steps * 128 / len(seq.tasks[0].train)))
    common = dict(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=128,
        train_epochs=epochs,
        eval_mb_size=4096,
        evaluator=EvaluationPlugin(),  # silent: accuracies are measured below
    )
    strategy = {
        "Naive": lambda: Naive(**common),
        "EWC": lambda: EWC(ewc_lambda=ewc_lambda, **common),
        "Replay": lambda: Replay(mem_size=memory, **common),
    }[name]()
    rows = []
    t0 = time.perf_counter()
    for experience in bench.train_stream:
        strategy.train(experience)
        model.eval()
        with torch.no_grad():
            rows.append(
                [float((model(t.test.x).argmax(-1) == t.test.y).float().mean()) for t in seq.tasks]
            )
    final = rows[-1]
    n = len(final)
    return {
        "acc": sum(final) / n,
        "bwt": sum(final[j] - rows[j][j] for j in range(n - 1)) / (n - 1),
        "wall": time.perf_counter() - t0,
        "epochs": epochs,
    }


def fipframe_rows(seeds: list[int], steps: int, memory: int) -> dict[str, list[dict]]:
    raw_path = ROOT / "runs/continual.json"
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    out: dict[str, list[dict]] = {}
    for method in [*PAIRS.values(), "DER++", "FIP penalty (L2 logits)"]:
        for seed in seeds:
            key = f"split|{method}|{seed}|{steps}|{memory}"
            if key not in raw:
                tmp = ROOT / "runs/peers-one.json"
                continual.worker("split", method, seed, steps, memory, str(tmp))
                raw[key] = json.loads(tmp.read_text())
            out.setdefault(method, []).append(raw[key]["test"])
    return out


def fmt(vals: list[float]) -> str:
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return f"{100 * m:.2f} +- {100 * s:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--memory", type=int, default=500)
    ap.add_argument("--ewc-lambda", type=float, default=1000.0)
    ap.add_argument("--out", default=str(ROOT / "docs/results/peers.md"))
    args = ap.parse_args()
    try:
        import avalanche  # noqa: F401
    except ImportError:
        sys.exit('bench/peers.py needs Avalanche: pip install -e ".[peers]"')
    steps = continual.SEQUENCES["split"]["steps"]
    ours = fipframe_rows(args.seeds, steps, args.memory)
    theirs: dict[str, list[dict]] = {}
    for name in PAIRS:
        for seed in args.seeds:
            r = avalanche_run(name, seed, steps, args.memory, args.ewc_lambda)
            theirs.setdefault(name, []).append(r)
            print(f"avalanche {name:7s} seed {seed}: ACC {100 * r['acc']:.2f} ({r['wall']:.0f} s)")
    epochs = theirs["Naive"][0]["epochs"]
    lines = [
        "# fipframe next to Avalanche",
        "",
        f"Command: `python bench/peers.py --seeds {' '.join(map(str, args.seeds))}`. Machine: "
        f"{os.cpu_count()} CPU threads ({platform.machine()}), torch {torch.__version__}, "
        f"avalanche-lib {__import__('importlib.metadata').metadata.version('avalanche-lib')}, "
        f"no GPU. Date: {date.today().isoformat()}.",
        "",
        "Split-MNIST, 5 tasks of 2 digits, class-incremental, the same tensors for both. "
        f"MLP 784-400-400-10, Adam 1e-3, batch 128, memory {args.memory}. fipframe: "
        f"{steps} steps per task; Avalanche: {epochs} epochs per task (the nearest whole "
        "number). Avalanche's Replay mixes stored examples into each batch; its EWC uses the "
        "empirical Fisher from minibatch gradients; both with lambda "
        f"{args.ewc_lambda:g}. Mean +- std of test accuracy (%) over seeds.",
        "",
        "| Avalanche | ACC | BWT | fipframe | ACC | BWT |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, ours_name in PAIRS.items():
        lines.append(
            f"| {name} | {fmt([r['acc'] for r in theirs[name]])} "
            f"| {fmt([r['bwt'] for r in theirs[name]])} | {ours_name} "
            f"| {fmt([r['acc'] for r in ours[ours_name]])} "
            f"| {fmt([r['bwt'] for r in ours[ours_name]])} |"
        )
    for extra in ("DER++", "FIP penalty (L2 logits)"):
        lines.append(
            f"| - | | | {extra} | {fmt([r['acc'] for r in ours[extra]])} "
            f"| {fmt([r['bwt'] for r in ours[extra]])} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
