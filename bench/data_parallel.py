"""Data-parallel throughput, side by side in one run: the same traversal by one process and by
N processes under torchrun (gloo on CPU, NCCL on CUDA), interleaved round by round.

    python bench/data_parallel.py [--nproc 2] [--repeats 2] [--steps 100] [--device cpu]

Real MNIST (digits 0-4, then 5-9), an MLP 784-400-400-10, global batch 256 and 256 stored
inputs per step: a trunk of plain steps, then a FIP penalty branch (KL) and a natural-step
branch. On CPU each setting gets the same cores: one process with T threads against N
processes with T/N threads each (T = the machine's cores), plus one process with T/N threads
(what one of the N does alone). Printed: seconds per step of each stage (the median over
repeats, evaluation at chunk ends included), each setting's ratio to one process, and the
relative distance between the settings' end points (the same path, to rounding).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CONFIG = {
    "name": "data-parallel",
    "model": {"kind": "mlp", "hidden": [400, 400]},
    "data": {"kind": "split_mnist", "tasks": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
             "eval_limit": 1000},
    "memory": {"size": 1024},
    "run": {"seed": 0, "chunk": 50, "progress": "off"},
    "stages": [{"name": "learn-0-4", "task": 0, "steps": 100, "batch_size": 256,
                "integrator": {"kind": "gradient", "lr": 0.001}, "objectives": ["task_ce"]}],
    "branches": {
        "fip": [{"name": "learn-5-9", "task": 1, "steps": 100, "batch_size": 256,
                 "memory_batch": 256, "metric": "kl", "objectives": ["task_ce"],
                 "integrator": {"kind": "penalty", "lr": 0.001, "alpha": 10.0}}],
        "natural": [{"name": "learn-5-9", "task": 1, "steps": 100, "batch_size": 256,
                     "memory_batch": 256, "metric": "kl", "objectives": ["task_ce"],
                     "integrator": {"kind": "natural", "eps": 0.05, "damping": 1.0}}],
    },
}  # fmt: skip


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Wall seconds per step of each stage, from the records' clock."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out, last = {}, 0.0
    for r in rows:
        if r["kind"] == "stage_end":
            out[f"{r['branch']}/{r['stage']}"] = (r["time"] - last) / r["step"]
            last = r["time"]
    return out


def ends(run_dir: Path) -> dict[str, dict]:
    from safetensors.torch import load_file

    return {p.name: load_file(p) for p in sorted((run_dir / "points").glob("*-end.safetensors"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    n = args.nproc
    config = copy.deepcopy(CONFIG)
    config["run"]["device"] = args.device
    for s in [*config["stages"], *(b[0] for b in config["branches"].values())]:
        s["steps"] = args.steps
    if args.device == "cpu":
        each = max(cores // n, 1)
        settings = {
            f"1 process x {cores} threads": (1, cores),
            f"{n} processes x {each} threads": (n, each),
            f"1 process x {each} threads": (1, each),
        }
    else:  # one GPU per process
        settings = {"1 process, 1 GPU": (1, 1), f"{n} processes, {n} GPUs": (n, 1)}
    print(
        f"python {platform.python_version()}, {cores} cores, device {args.device}, "
        f"{args.repeats} repeats, {args.steps} steps per stage, {time.strftime('%Y-%m-%d')}"
    )
    timing: dict[str, list[dict[str, float]]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        for rep in range(args.repeats):  # interleaved: drift in load hits every setting alike
            for name, (procs, threads) in settings.items():
                out = Path(tmp) / f"{rep}-{procs}-{threads}"
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                cmd = [sys.executable, "-m", "fipframe", "run", str(path), "--out", str(out)]
                if procs > 1:
                    cmd += ["--nproc", str(procs)]
                subprocess.run(cmd, check=True, capture_output=True, env=env)
                timing[name].append(stage_seconds(out))
        first = list(settings)
        # the path check in float64, where rounding cannot be mistaken for a difference: Adam
        # turns the other summation order of N shares into visible steps in float32
        for procs in (1, n):
            out = Path(tmp) / f"f64-{procs}"
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, "-m", "fipframe", "run", str(path), "--out", str(out)]
            cmd += ["run.dtype=float64", *(["--nproc", str(procs)] if procs > 1 else [])]
            subprocess.run(cmd, check=True, capture_output=True, env=env)
        points = {
            "float32": (ends(Path(tmp) / f"0-1-{settings[first[0]][1]}"),
                        ends(Path(tmp) / f"0-{settings[first[1]][0]}-{settings[first[1]][1]}")),
            "float64": (ends(Path(tmp) / "f64-1"), ends(Path(tmp) / f"f64-{n}")),
        }  # fmt: skip
    stages = list(timing[first[0]][0])
    base = {s: statistics.median(t[s] for t in timing[first[0]]) for s in stages}
    head = f"{'stage':<22}" + "".join(f"{k:>30}" for k in settings)
    print("\nms per step (median over repeats); in brackets: x the first setting")
    print(head)
    for s in stages:
        cells = []
        for name in settings:
            m = statistics.median(t[s] for t in timing[name])
            cells.append(f"{1e3 * m:>20.1f} ({m / base[s]:.2f}x)")
        print(f"{s:<22}" + "".join(f"{c:>30}" for c in cells))
    print(f"\n||w - w_ref|| / ||w_ref|| of each stage's end point, {n} processes vs 1:")
    for dtype, (ref, other) in points.items():
        gaps = {}
        for f in ref:
            num = sum(float((ref[f][k] - other[f][k]).square().sum()) for k in ref[f])
            den = sum(float(ref[f][k].square().sum()) for k in ref[f])
            gaps[f.split("-00-")[0]] = (num / den) ** 0.5
        print(f"  {dtype}: " + ", ".join(f"{b} {g:.1e}" for b, g in gaps.items()))


if __name__ == "__main__":
    main()
