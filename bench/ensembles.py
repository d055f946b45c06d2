"""Ensembles along paths on MNIST against adversarial examples: a FIP ensemble, fast geometric
ensembling (FGE) and independently trained networks, 3 trials.

Per trial one network N0 is trained on all ten digits. Then, K members each:

- fip: a branch from N0 of K stages; each moves with the KL invariance term on 1,000 stored
  training inputs, the task's cross-entropy and the ``diversity`` objective (away from the
  members before it, in weight space); each stage's end is a member;
- fge: a branch from N0 of K cycles of a triangular learning rate (SGD, momentum 0.9; Garipov
  et al. 2018); each cycle's low point is a member;
- independent: K more networks trained as N0 was, from other initialisations.

N0, on which the transfer attacks are crafted, is in none of the ensembles. Compute (example
passes forward and backward, stated on the page): N0 costs ``T x B``; the FIP branch
``K x S x (B + M)``; FGE ``(2K - 1) x S x B`` (K cycles of ``2 S`` steps, the last one's rising
half not run: its low point is the last member); the independent ensemble ``K x T x B``. FIP
and FGE get ``BUDGET`` settings each, chosen on trial 0's validation split by the ensemble's
transfer-PGD accuracy among the settings whose clean accuracy is within 1 point of N0's (all of
them if none is); the independent networks are trained exactly as N0 (their one setting).

Attacks (torchattacks, L-inf, pixel units): FGSM and PGD crafted on N0 (transfer, the papers'
setting) on the whole test set, and PGD on each averaged ensemble itself (adaptive, white-box)
on its first ``--adaptive`` test examples. Clean accuracy beside each. Also the cost of one
vmapped forward of all members against a loop over them.

    python bench/ensembles.py              # ~45 min on 2 CPU cores
    python bench/ensembles.py --steps 600 --member-steps 30 --eval-limit 10000 --adaptive 10000
    python bench/ensembles.py --steps 40 --members 3 --trials 0 --limit 1000 --eval-limit 300 \
        --adaptive 100 --out /tmp/e.md     # smoke

Raw results go to runs/ensembles.json (resumed from); the page to docs/results/ensembles.md,
keeping the notes below ``NOTES``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _report import mean_std, outcome, write_keeping  # noqa: E402

import fipframe  # noqa: E402
from fipframe.data.mnist import MEAN, STD  # noqa: E402
from fipframe.eval import ensemble as E  # noqa: E402
from fipframe.eval.points import load_module, read_point  # noqa: E402

NOTES = "## What we learned"
BUDGET = 2
MODEL = {"kind": "small_cnn", "channels": [32, 64], "hidden": 128}
GRID = {
    "fip": [{"diversity": 1.0}, {"diversity": 4.0}],
    "fge": [{"lr": 0.05}, {"lr": 0.02}],
}
B = M = 128
EPS = 0.1
ATTACKS = {
    "fgsm": E.AttackConfig(kind="fgsm", eps=EPS),
    "pgd": E.AttackConfig(kind="pgd", eps=EPS, steps=10),
}
METHODS = ["single", "fip", "fge", "independent"]


def config(args, seed: int, fip: dict, fge: dict) -> dict:
    k, s = args.members, args.member_steps
    member = {
        "task": 0,
        "steps": s,
        "batch_size": B,
        "memory_batch": M,
        "integrator": {"kind": "penalty", "lr": 1e-3, "alpha": 1.0},
        "metric": "kl",
        "objectives": ["task_ce", {"kind": "diversity", "weight": fip["diversity"]}],
    }
    cycle = []
    hi, lo = fge["lr"], fge["lr"] / 100
    for i in range(k):
        for name, lr in ((f"down{i}", (hi, lo)), (f"up{i}", (lo, hi))):
            cycle.append(
                {
                    "name": name,
                    "task": 0,
                    "steps": s,  # a cycle of 2 S steps of B: the FIP member's S x (B + M)
                    "batch_size": B,
                    "integrator": {
                        "kind": "gradient",
                        "lr": {"start": lr[0], "end": lr[1]},
                        "optimizer": {"name": "sgd", "momentum": 0.9},
                    },
                    "objectives": ["task_ce"],
                }
            )
    return {
        "model": MODEL,
        "data": {
            "kind": "split_mnist",
            "tasks": [list(range(10))],
            "train_limit": args.limit,
            "eval_limit": args.eval_limit,
        },
        "memory": {"size": 1000},
        "run": {"seed": seed, "chunk": 100, "progress": "off", "measure_inputs": 0},
        "stages": [
            {
                "name": "train",
                "task": 0,
                "steps": args.steps,
                "batch_size": B,
                "integrator": {"kind": "gradient", "lr": 1e-3},
                "objectives": ["task_ce"],
            }
        ],
        "branches": {
            "fip": [dict(member, name=f"m{i}") for i in range(k)],
            "fge": cycle[:-1],
        },
    }


def independent(args, trial: int, work: Path) -> list:
    """N0's training from K other initialisations (the ends of trunk-only runs)."""
    out = []
    for j in range(1, args.members + 1):
        root = work / f"indep-{trial}-{j}"
        if not (root / "summary.json").exists():
            cfg = config(args, 1000 + 100 * trial + j, GRID["fip"][0], GRID["fge"][0])
            cfg["branches"] = {}
            cfg["run"]["chunk"] = args.steps  # evaluated once, at the end
            fipframe.run(cfg, out=root)
        out.append(read_point(f"{root}#trunk"))
    return out


def evaluate(args, trial: int, work: Path, fip: dict, fge: dict, split: str, full: bool) -> dict:
    seed = 10 + trial
    root = work / f"t{trial}-fip{fip['diversity']}-fge{fge['lr']}"
    t0 = time.perf_counter()
    if not (root / "summary.json").exists():
        fipframe.run(config(args, seed, fip, fge), out=root)
    ran = time.perf_counter() - t0
    tr = fipframe.build(config(args, seed, fip, fge))
    data = getattr(tr.tasks.tasks[0], split)
    x, y = data.x, data.y
    net = tr.adapter.model
    n0 = read_point(f"{root}#trunk")
    groups = {
        "single": [n0],
        "fip": E.members(root, "fip"),
        "fge": E.members(root, "fge", stages="down*"),
    }
    if full:
        groups["independent"] = independent(args, trial, work)
    load_module(net, n0)
    net.eval()
    crafted = {name: E.attack(net, x, y, cfg, mean=MEAN, std=STD) for name, cfg in ATTACKS.items()}
    out: dict = {"run_seconds": ran, "inputs": len(x)}
    for name, members in groups.items():
        ens = E.Ensemble(net, members)
        row = {"clean": E.accuracy(E.batched(ens, x), y)}
        for atk, adv in crafted.items():
            row[f"transfer_{atk}"] = E.accuracy(E.batched(ens, adv), y)
        if full:
            d = E.diversity(ens, x, y)
            row.update(
                member_acc=d["member_acc"],
                disagreement_clean=d["disagreement"],
                disagreement_adv=E.diversity(ens, crafted["pgd"], y)["disagreement"],
                distances=d["distance_matrix"],
            )
            n = args.adaptive
            adv = E.attack(ens, x[:n], y[:n], ATTACKS["pgd"], mean=MEAN, std=STD)
            row["adaptive_pgd"] = E.accuracy(E.batched(ens, adv), y[:n])
            row["clean_adaptive_subset"] = E.accuracy(E.batched(ens, x[:n]), y[:n])
            flat = [torch.cat([v.reshape(-1) for v in m.params.values()]) for m in members]
            row["flat"] = flat  # for the PCA figure, dropped before saving
        out[name] = row
        print(
            f"  trial {trial} {name}: clean {100 * row['clean']:.2f}, transfer PGD "
            f"{100 * row['transfer_pgd']:.2f}"
            + (f", adaptive PGD {100 * row['adaptive_pgd']:.2f}" if "adaptive_pgd" in row else ""),
            flush=True,
        )
    return out


def pick(tune: dict, method: str) -> int:
    """The setting with the best val transfer-PGD accuracy among those whose clean accuracy is
    within 1 point of N0's (among all of them if none is)."""
    ok = [
        i
        for i in range(BUDGET)
        if tune[str(i)][method]["clean"] >= tune[str(i)]["single"]["clean"] - 0.01
    ] or list(range(BUDGET))
    return max(ok, key=lambda i: tune[str(i)][method]["transfer_pgd"])


def cost(args, work: Path) -> dict:
    """One vmapped forward of K members against a loop over them, on the test inputs."""
    root = next(p for p in sorted(work.glob("t0-*")) if (p / "summary.json").exists())
    cfg = json.loads(json.dumps(config(args, 10, GRID["fip"][0], GRID["fge"][0])))
    tr = fipframe.build(cfg)
    ens = E.Ensemble(tr.adapter.model, E.members(root, "fip"))
    x = tr.tasks.tasks[0].test.x[:1000]
    times = {}
    for name, fn in (("vmap", ens.member_logits), ("loop", ens.loop_logits)):
        with torch.no_grad():
            fn(x[:100])  # warm-up
            reps = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn(x)
                reps.append(time.perf_counter() - t0)
        times[name] = sorted(reps)[len(reps) // 2]
    assert torch.allclose(ens.member_logits(x[:50]), ens.loop_logits(x[:50]), atol=1e-4)
    return {"members": len(ens.modules_), "inputs": len(x), **times}


def pct(xs: list[float]) -> str:
    m, s = mean_std([100 * v for v in xs])
    return f"{m:.2f} +- {s:.2f}"


def report(args, res: dict, choice: dict) -> str:
    trials = [res[str(t)] for t in args.trials]
    T, K, S = args.steps, args.members, args.member_steps
    unit = T * B
    costs = {
        "single": T * B,
        "fip": T * B + K * S * (B + M),
        "fge": T * B + (2 * K - 1) * S * B,
        "independent": K * T * B,
    }
    lines = [
        f"`python bench/ensembles.py` on {platform.node() or 'this machine'} "
        f"({torch.get_num_threads()} threads, CPU), {date.today()}; trials {args.trials}; small "
        f"CNN {MODEL['channels']} on MNIST (all ten digits, {args.limit or 50000} training "
        f"examples); K = {K} members; N0 trained {T} steps of {B}; FIP members {S} steps of "
        f"{B} + {M} stored; FGE cycles {2 * S} steps of {B}; L-inf eps {EPS} (pixels); PGD "
        f"{ATTACKS['pgd'].steps} steps of {2.5 * EPS / ATTACKS['pgd'].steps:.3f}; transfer "
        f"attacks on all {trials[0]['inputs']} test examples, adaptive PGD on the first "
        f"{args.adaptive}. N0 (the attacks' source) is in no ensemble.",
        "",
        "Chosen on trial 0's validation transfer-PGD accuracy among settings within 1 point "
        f"of N0's clean accuracy ({BUDGET} settings each): FIP diversity weight "
        f"{choice['fip']['diversity']}, FGE peak lr {choice['fge']['lr']} (low point lr/100).",
        "",
        "| method | training compute (x N0) | clean (%) | FGSM transfer (%) | PGD transfer (%) "
        "| PGD adaptive (%) | clean on that subset (%) | members' clean (%) "
        "| disagreement clean / PGD (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    per: dict = {}
    for m in METHODS:
        rows = [t[m] for t in trials]
        per[m] = {k: [r[k] for r in rows] for k in ("clean", "transfer_pgd", "adaptive_pgd")}
        members = [sum(r["member_acc"]) / len(r["member_acc"]) for r in rows]
        dis = (
            f"{pct([r['disagreement_clean'] for r in rows])} / "
            f"{pct([r['disagreement_adv'] for r in rows])}"
        )
        lines.append(
            f"| {m} | {costs[m] / unit:.1f} | {pct(per[m]['clean'])} | "
            f"{pct([r['transfer_fgsm'] for r in rows])} | {pct(per[m]['transfer_pgd'])} | "
            f"{pct(per[m]['adaptive_pgd'])} | {pct([r['clean_adaptive_subset'] for r in rows])} "
            f"| {pct(members)} | {dis} |"
        )
    frac = costs["fip"] / costs["independent"]
    fip_t, ind_t = per["fip"]["transfer_pgd"], per["independent"]["transfer_pgd"]
    clean_rule = outcome(per["fip"]["clean"], per["independent"]["clean"])
    verdict = "hit" if mean_std(fip_t)[0] >= mean_std(ind_t)[0] and clean_rule != "loss" else "miss"
    lines += [
        "",
        "single: N0 alone (the network the transfer attacks are crafted on, so for it they "
        "are white-box). Rule: a method leads when its mean exceeds the other's by more than "
        "the larger std over the trials.",
        "",
    ]
    for a, b in (("fip", "independent"), ("fip", "fge"), ("fip", "single")):
        vs = {k: outcome(per[a][k], per[b][k]) for k in ("transfer_pgd", "adaptive_pgd", "clean")}
        lines.append(
            f"- {a} vs {b}: transfer PGD **{vs['transfer_pgd']}**, adaptive PGD "
            f"**{vs['adaptive_pgd']}**, clean **{vs['clean']}**"
        )
    c = res["cost"]
    lines += [
        "",
        f"Target (FIP ensemble's transfer-attack accuracy at or above the independent "
        f"ensemble's, at a fraction of its compute): **{verdict}** ({pct(fip_t)} vs "
        f"{pct(ind_t)} % by the means, clean accuracy {clean_rule}, at {100 * frac:.0f} % of its "
        f"training compute; {outcome(fip_t, ind_t)} by the rule).",
        "",
        f"Evaluation cost: one vmapped forward of {c['members']} members on {c['inputs']} inputs "
        f"{1000 * c['vmap']:.0f} ms, a loop over them {1000 * c['loop']:.0f} ms: "
        f"**{c['loop'] / c['vmap']:.2f}x** (median of 5).",
        "",
        "![members](../img/ensembles_pca.png)",
        "",
        "![diversity](../img/ensembles_diversity.png)",
        "",
    ]
    return "\n".join(lines)


def figures(args, flats: dict, res: dict, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    shared = [flats["single"][0], *flats["fip"], *flats["fge"]]
    xy = E.weight_pca(shared)
    k = len(flats["fip"])
    ax = axes[0]
    ax.scatter(xy[0, 0], xy[0, 1], marker="*", s=160, c="k", label="N0")
    ax.plot(xy[1 : 1 + k, 0], xy[1 : 1 + k, 1], "o-", label="FIP members (in order)")
    ax.plot(xy[1 + k :, 0], xy[1 + k :, 1], "s--", label="FGE snapshots")
    ax.set_title("FIP and FGE members from N0: weight PCA")
    ax.legend(fontsize=8)
    xy2 = E.weight_pca(flats["independent"])
    axes[1].scatter(xy2[:, 0], xy2[:, 1], c="C2", label="independent networks")
    axes[1].set_title("independent networks: weight PCA")
    for a in axes:
        a.set_xlabel("PC 1")
        a.set_ylabel("PC 2")
        a.grid(alpha=0.3)
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(img / f"ensembles_pca{suffix}", dpi=200)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    methods = ["fip", "fge", "independent"]
    trials = [res[str(t)] for t in args.trials]
    for i, key in enumerate(("disagreement_clean", "disagreement_adv")):
        vals = [[100 * t[m][key] for t in trials] for m in methods]
        ax.bar(
            [j + 0.38 * i for j in range(3)],
            [mean_std(v)[0] for v in vals],
            0.38,
            yerr=[mean_std(v)[1] for v in vals],
            label={"disagreement_clean": "clean test", "disagreement_adv": "PGD (transfer)"}[key],
        )
    ax.set_xticks([j + 0.19 for j in range(3)], methods)
    ax.set_ylabel("pairwise disagreement (%)")
    ax.set_title("members' disagreement: clean test inputs vs PGD (transfer)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(img / f"ensembles_diversity{suffix}", dpi=200)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=400, help="N0's training steps (T)")
    ap.add_argument("--members", type=int, default=10, help="K")
    ap.add_argument("--member-steps", type=int, default=20, help="S")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--eval-limit", type=int, default=5000)
    ap.add_argument("--adaptive", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/ensembles.md")
    ap.add_argument("--raw", type=Path, default=ROOT / "runs/ensembles.json")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    args.raw.parent.mkdir(parents=True, exist_ok=True)
    res = json.loads(args.raw.read_text()) if args.raw.exists() else {}
    scratch = tempfile.TemporaryDirectory(prefix="fipframe-ensembles-")  # removed at exit
    work = args.work or Path(scratch.name)
    if "tuning" not in res:
        print("tuning on trial 0's validation split", flush=True)
        res["tuning"] = {}
        for i in range(BUDGET):
            got = evaluate(
                args, args.trials[0], work, GRID["fip"][i], GRID["fge"][i], "val", full=False
            )
            res["tuning"][str(i)] = {
                m: {k: got[m][k] for k in ("clean", "transfer_pgd")}
                for m in ("fip", "fge", "single")
            }
        args.raw.write_text(json.dumps(res))
    tune = res["tuning"]
    choice = {m: GRID[m][pick(tune, m)] for m in ("fip", "fge")}
    flats = None
    for t in args.trials:
        if str(t) in res:
            continue
        print(f"trial {t}", flush=True)
        got = evaluate(args, t, work, choice["fip"], choice["fge"], "test", full=True)
        if t == args.trials[0]:
            flats = {m: got[m].pop("flat") for m in METHODS}
        for m in METHODS:
            got[m].pop("flat", None)
        res[str(t)] = got
        args.raw.write_text(json.dumps(res))
    if "cost" not in res:
        res["cost"] = cost(args, work)
        args.raw.write_text(json.dumps(res))
    img = args.out.parent.parent / "img" if args.out.parent.name == "results" else args.out.parent
    img.mkdir(parents=True, exist_ok=True)
    if flats is not None:
        figures(args, flats, res, img)
    page = (
        "# Ensembles along paths\n\nWritten by `bench/ensembles.py`; the method: docs/paths.md.\n\n"
    )
    page += report(args, res, choice)
    write_keeping(args.out, page, NOTES)
    print(page)


if __name__ == "__main__":
    main()
