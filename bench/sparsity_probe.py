"""Probe FIP sparsification recipes on one seed and one sparsity, against GMP.

A quicker companion of bench/sparsity.py for choosing a recipe on the validation split before
the 3-seed run: one trunk (its dense stage with the learning rate decayed to 0 by a half
cosine, so the dense network is a converged point rather than a noisy Adam iterate), then GMP
and FIP branches under two inner optimisers, each at the same number of examples as in
bench/sparsity.py. Prints val and test accuracy per branch; writes runs/sparsity-probe/.

Branches (--variants; default gmp, fip, gmp_sgd, fip_sgd_b1):

- gmp, fip: Adam at the arch's trunk lr, bench/sparsity.py's "adam" recipe (FIP: l2 pull
  of weight 100), whatever recipe that arch's 3-seed rows use.
  Adam normalises each coordinate, so the pull moves a pruned weight by about lr per step
  whatever its weight. fip_share07, fip_alpha01, fip_w1000 change one FIP setting (path 0.7
  of the budget, alpha 0.1, pull weight 1,000).
- fip_eps<e> (e.g. fip_eps0.1): the papers' step (integrator eps_step: length e along the
  penalty's gradient) on the path, the arch's own recipe for the pull and fine-tuning.
- fip_alpha0, fip_mem32: the arch's own recipe with no invariance term (alpha 0: the pull and
  the task loss alone), or with a quarter of each batch on stored inputs instead of half.
- fip_hard, fip_hard_mem32: the path under GMP's hard masks (cubic over 0.7 of the whole
  budget, mask every 50 steps) with the KL invariance term on stored inputs and the task
  loss, no separate pull or fine-tuning: GMP with FIP's invariance added, at equal examples.
- gmp_sgd, fip_sgd_b1, fip_sgd_b03: the "sgd" recipe, SGD with momentum 0.9 at --sgd-lr in
  every stage of both methods, FIP with a squared pull of weight 1 (or 0.3), whose step on a
  masked weight is proportional to that weight instead of normalised per coordinate.

The trunk is always the converged one, whatever the arch's rows use; compare a probe with the
rows' own recipe through their val numbers (runs/sparsity.json).

    python bench/sparsity_probe.py --arch resnet18 --seed 1 --sparsity 0.9   # ~20 min, 2 cores
    python bench/sparsity_probe.py --arch resnet18 --seed 1 --sparsity 0.9 --variants \
        gmp fip fip_share07 fip_alpha01 fip_w1000 gmp_sgd fip_sgd_b1 fip_sgd_b03   # ~30 min
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import sparsity as sp

import fipframe


def variants(
    arch: str, s: float, sgd_lr: float, eps: tuple[float, ...] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Every branch the probe knows, by name (a branch's name also seeds its batches)."""
    a = sp.ARCHS[arch]
    budget = a["budget"]
    adam, sgd = sp.recipe("adam", a["lr"]), sp.recipe("sgd", sgd_lr)

    def fip(
        rec: dict[str, Any],
        share: float = sp.FIP_SHARE,
        *,
        alpha: float | None = None,
        weight: float | None = None,
        memory: int | None = None,
        eps: float | None = None,
        hard: bool = False,
    ) -> list[Any]:
        """FIP's branch under ``rec`` with the named path settings changed: invariance weight
        ``alpha``, pull ``weight``, ``memory`` stored inputs per batch of BATCH, the papers'
        step of length ``eps``; ``hard``: GMP's hard mask schedule over the whole budget
        instead of the pull and the fine-tuning."""
        stages = sp.branches("fip", s, budget, rec, share=1.0 if hard else share)
        path = stages[0]
        if alpha is not None:
            path["integrator"]["alpha"] = alpha
        if weight is not None:
            path["objectives"][0]["weight"] = weight
        if memory is not None:
            path["batch_size"], path["memory_batch"] = sp.BATCH - memory, memory
        if eps is not None:
            path["integrator"] = {"kind": "eps_step", "eps": eps, "alpha": 1.0}
        if hard:
            path["objectives"] = ["task_ce"]
            path["prune"] = {**sp.GMP_SCHEDULE, "sparsity": s}
            return [path]
        return stages

    own = sp.arch_recipe(arch)

    return {
        f"gmp_{s:g}": sp.branches("gmp", s, budget, adam),
        f"fip_{s:g}": fip(adam),
        "fip_share07": fip(adam, share=0.7),
        "fip_alpha01": fip(adam, alpha=0.1),
        "fip_w1000": fip(adam, weight=1000.0),
        "fip_alpha0": fip(own, alpha=0.0),
        "fip_mem32": fip(own, memory=sp.BATCH // 4),
        "fip_hard": fip(own, hard=True),
        "fip_hard_mem32": fip(own, memory=sp.BATCH // 4, hard=True),
        "gmp_sgd": sp.branches("gmp", s, budget, sgd),
        "fip_sgd_b1": fip(sgd),
        "fip_sgd_b03": fip(sgd, weight=0.3),
        **{f"fip_eps{e:g}": fip(own, eps=e) for e in eps},
    }


DEFAULT = ("gmp", "fip", "gmp_sgd", "fip_sgd_b1")


def config(arch: str, seed: int, s: float, sgd_lr: float, names: list[str]) -> dict[str, Any]:
    cfg = sp.config(arch, seed)
    cfg["stages"][1]["integrator"]["lr"] = sp.trunk_lr(arch, "cosine")
    try:
        eps = tuple(float(n.removeprefix("fip_eps")) for n in names if n.startswith("fip_eps"))
    except ValueError:
        bad = [n for n in names if n.startswith("fip_eps")]
        raise SystemExit(
            f"--variants: fip_eps<length> takes a number, e.g. fip_eps0.1; got {bad}"
        ) from None
    known = variants(arch, s, sgd_lr, eps)
    full = [f"{n}_{s:g}" if n in ("gmp", "fip") else n for n in names]
    unknown = [n for n in full if n not in known]
    if unknown:
        raise SystemExit(
            f"--variants: unknown {unknown}; known: gmp, fip, {', '.join(list(known)[2:])}"
        )
    cfg["branches"] = {n: known[n] for n in full}
    cfg["run"]["progress"] = "off"
    return cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18", choices=list(sp.ARCHS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--sgd-lr", type=float, default=0.01)
    p.add_argument("--variants", nargs="*", default=list(DEFAULT), help="branches to run")
    args = p.parse_args()
    cfg = config(args.arch, args.seed, args.sparsity, args.sgd_lr, args.variants)
    out = sp.ROOT / "runs" / "sparsity-probe" / f"{args.arch}-{args.seed}-{args.sparsity:g}"
    shutil.rmtree(out, ignore_errors=True)  # a probe is cheap to repeat: start over
    t0 = time.monotonic()
    fipframe.run(cfg, out=out)
    records = [json.loads(x) for x in Path(out, "metrics.jsonl").read_text().splitlines()]
    print(
        f"{args.arch} seed {args.seed}, {100 * args.sparsity:g}% sparsity, "
        f"{time.monotonic() - t0:.0f} s"
    )
    print("| branch | val % | test % |\n|---|---|---|")
    for branch in ["trunk", *cfg["branches"]]:
        end = [r for r in records if r["kind"] == "stage_end" and r["branch"] == branch][-1]
        m = end["metrics"]
        print(
            f"| {branch} | {100 * m['acc/val/average']:.2f} | {100 * m['acc/test/average']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
