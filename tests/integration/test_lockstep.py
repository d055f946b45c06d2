"""Lockstep paths: several runs in one process with their steps stacked (vmap over a path
axis) walk the paths they walk alone, keep their own run directories, fall back to computing a
step alone where it cannot be stacked (and say why), and survive a failure or Ctrl-C of one of
them.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml

import fipframe
from fipframe.api import load_config, run, run_lockstep
from fipframe.builtin.geometry import Natural, NaturalConfig
from fipframe.builtin.metrics import KL, KLConfig
from fipframe.core.integrator import SolveSpec
from fipframe.eval.results import RunResult
from fipframe.plugins import make_plugin_manager
from fipframe.registry import Spec
from fipframe.sweep import execute, prepare
from fipframe.traversal import lockstep
from fipframe.traversal.artifact import CHECKPOINT
from tests.conftest import TINY


def configs(seeds=(0, 1, 2), projected: bool = False, **model: Any) -> list[dict[str, Any]]:
    """TINY in float64 with a natural-step branch beside fine-tuning and the FIP penalty
    (and a projected-step branch, Lanczos every 10 steps)."""
    out = []
    for seed in seeds:
        c = copy.deepcopy(TINY)
        c["run"].update(seed=seed, dtype="float64")
        c["model"].update(model)
        natural = copy.deepcopy(c["branches"]["fip"][0])
        # CG solved to 1e-10: at the default tolerance a rounding-level change of the
        # gradient can change the number of iterations, and the path moves by ~cg_tol
        natural["integrator"] = {
            "kind": "natural",
            "eps": 0.05,
            "damping": 0.1,
            "cg_tol": 1e-10,
            "cg_iters": 200,
        }
        c["branches"]["natural"] = [natural]
        if projected:
            top = copy.deepcopy(natural)
            top["integrator"] = {"kind": "projected", "eps": 0.05, "rank": 5, "refresh": 10}
            c["branches"]["projected"] = [top]
        out.append(c)
    return out


def largest_gap(a: RunResult, b: RunResult, skip: tuple[str, ...] = ()) -> float:
    """The largest weight difference over every stage's end point (held or on disk), but
    those of the branches ``skip``."""
    ends = [(r["branch"], r["stage"]) for r in a.records if r["kind"] == "stage_end"]
    assert ends == [(r["branch"], r["stage"]) for r in b.records if r["kind"] == "stage_end"]
    gaps = []
    for branch, stage in ends:
        if branch in skip:
            continue
        pa, pb = a.point(branch, stage).params, b.point(branch, stage).params
        gaps += [float((pa[n] - pb[n]).abs().max()) for n in pa]
    return max(gaps)


def accuracies(result: RunResult) -> list[tuple]:
    return [
        (r["branch"], r["stage"], r["step"], {k: v for k, v in r["metrics"].items() if "acc" in k})
        for r in result.records
    ]


def test_stacked_paths_walk_what_they_walk_alone():
    cs = configs(projected=True)
    alone = [run(load_config(c)) for c in cs]
    said: list[str] = []
    walks = [fipframe.api.build(load_config(c)).walk(notes=lockstep.Notes(said.append)) for c in cs]
    outcomes = lockstep.run_together(walks, say=said.append)
    assert [o.error for o in outcomes] == [None] * 3
    assert said == []  # every step of every path was stacked
    steps = sum(
        s["steps"] for s in [cs[0]["stages"][0]] + [b[0] for b in cs[0]["branches"].values()]
    )
    evaluations = steps // cs[0]["run"]["chunk"]  # every chunk end, the stage ends among them
    # the natural branch's solves too (its stage has stored inputs at every step), and the
    # projected branch's Lanczos runs (every 10 of its 30 steps)
    top = cs[0]["branches"]["projected"][0]
    solves = cs[0]["branches"]["natural"][0]["steps"] + math.ceil(
        top["steps"] / top["integrator"]["refresh"]
    )
    assert [o.stacked for o in outcomes] == [
        {"step": steps, "evaluate": evaluations, "solve": solves}
    ] * 3
    for a, o in zip(alone, outcomes, strict=True):
        b = o.value
        assert largest_gap(a, b, skip=("projected",)) < 1e-10
        # Lanczos' Ritz vectors amplify rounding: alone, 1 against 2 threads measured
        # 1e-11 to 4e-9 on these three seeds' projected branches (stacked: 1e-10 to 3e-9)
        assert largest_gap(a, b) < 1e-8
        assert accuracies(a) == accuracies(b)


def test_steps_that_cannot_stack_are_computed_alone_and_said():
    # dropout: the stored inputs need their own eval-mode forward (and each run draws its own
    # masks from its own random stream); another width: another key
    cs = configs((0, 1), dropout=0.2) + configs((2,), hidden=[16])
    alone = [run(load_config(c)) for c in cs]
    said: list[str] = []
    got = run_lockstep([load_config(c) for c in cs], say=said.append)
    for a, b in zip(alone, got, strict=True):
        assert largest_gap(a, b) < 1e-10
        assert accuracies(a) == accuracies(b)
    mode = [s for s in said if "has dropout or BatchNorm" in s]
    assert len(mode) == 2 * 4  # once per stage of each dropout run
    assert "lockstep: run 0: fip/second: the model has dropout" in "\n".join(mode)
    assert len(said) == len(mode)  # the other width is simply not stacked with them


class Stop:
    """A plugin (registered on the plugin manager like any other) that stops one run once."""

    def __init__(self, seed: int, step: int, exc: BaseException):
        self.seed, self.step, self.exc, self.fired = seed, step, exc, False

    @fipframe.hookimpl
    def fipframe_chunk_end(self, run, step, metrics):
        if not self.fired and run.config.run.seed == self.seed and step == self.step:
            self.fired = True
            raise self.exc


def with_plugin(plugin: Any, cs: list[dict[str, Any]]) -> list[Any]:
    pm = make_plugin_manager(entry_points_enabled=False)
    pm.register(plugin)
    return [load_config(c, pm=pm) for c in cs]


def test_one_failing_run_leaves_the_others(tmp_path: Path):
    cs = configs((0, 1, 2))
    outs = [tmp_path / f"seed-{i}" for i in range(3)]
    with pytest.raises(fipframe.errors.TraversalError, match="boom"):
        run_lockstep(with_plugin(Stop(1, 20, RuntimeError("boom")), cs), outs=outs)
    for i in (0, 2):  # finished, and their own paths
        assert largest_gap(RunResult.load(outs[i]), run(load_config(cs[i]))) < 1e-10
    assert not (outs[1] / "summary.json").exists()


def test_interrupted_lockstep_continues_where_each_run_stopped(tmp_path: Path):
    cs = configs((0, 1))
    outs = [tmp_path / f"seed-{i}" for i in range(2)]
    plugin = Stop(1, 20, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run_lockstep(with_plugin(plugin, cs), outs=outs)
    assert all((o / CHECKPOINT).is_file() for o in outs)
    # the same call again continues every run from its own checkpoint
    got = run_lockstep(with_plugin(plugin, cs), outs=outs)
    for c, b in zip(cs, got, strict=True):
        assert largest_gap(run(load_config(c)), b) < 1e-10


def test_a_sweep_walks_its_seeds_in_lockstep(tmp_path: Path):
    base = configs((0,))[0]
    todo = prepare([], [], [0, 1], tmp_path, lambda extra: load_config(base, overrides=extra))
    said: list[str] = []
    outcomes = execute(todo, backend="local", workers=1, threads=0, lockstep=2, say=said.append)
    assert [o["status"] for o in outcomes] == ["ran", "ran"]
    for seed in (0, 1):
        alone = run(load_config(base, overrides=[f"run.seed={seed}"]))
        assert largest_gap(alone, RunResult.load(tmp_path / "base" / f"seed-{seed}")) < 1e-10
    # again: read back, nothing walked
    again = execute(todo, backend="local", workers=1, threads=0, lockstep=2, say=said.append)
    assert [o["status"] for o in again] == ["done before", "done before"]


def test_stacked_gradients_equal_the_separate_ones():
    """The one stacked forward and backward gives each path its own gradient (float64)."""
    torch.manual_seed(0)
    cs = [load_config(c) for c in configs((0, 1, 2))]
    walks = [fipframe.api.build(c).walk(notes=lockstep.Notes()) for c in cs]
    requests = [next(w) for w in walks]
    given = lockstep.gradients(requests)
    for r, g in zip(requests, given, strict=True):
        leaves = {n: p.detach().requires_grad_(True) for n, p in r.params.items()}
        terms = r.problem.evaluate(leaves)
        grads = torch.autograd.grad(terms.objective, list(leaves.values()))
        for a, b in zip(grads, g.grads, strict=True):
            assert float((a - b).abs().max()) < 1e-12
    for w in walks:
        w.close()


def test_paths_out_of_step_stack_what_they_can():
    """Runs whose stages differ in length drift apart: each walks its own path, and whatever
    steps and evaluations meet still stack."""
    cs = configs((0, 1, 2))
    cs[1]["stages"][0]["steps"] = 20
    cs[2]["stages"][0]["steps"] = 50
    cs[2]["run"]["chunk"] = 5
    alone = [run(load_config(c)) for c in cs]
    walks = [fipframe.api.build(load_config(c)).walk(notes=lockstep.Notes()) for c in cs]
    outcomes = lockstep.run_together(walks)
    for a, o in zip(alone, outcomes, strict=True):
        assert o.error is None
        assert largest_gap(a, o.value) < 1e-10
        assert accuracies(a) == accuracies(o.value)
        # stages meet with other stages' shapes (finetune's batch against fip's batch and
        # stored inputs), so only part of each path stacks: measured 101, 96 and 58 steps
        assert o.stacked["step"] > 40 and o.stacked["evaluate"] > 0


def test_run_seeds_in_lockstep_from_the_command_line(tmp_path: Path, capsys):
    from fipframe.cli import main

    path = tmp_path / "c.yaml"
    config = configs((0,))[0]
    config["run"]["progress"] = "lines"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "runs"
    assert main(["run", str(path), "--seeds", "0", "1", "--lockstep", "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "natural" in said.out and (out / "comparison.txt").is_file()
    # each run's lines say which run they are about
    assert f"{out / 'seed-1'}: fip/second [branch 2 of 3] done." in said.err
    for seed in (0, 1):
        c = configs((seed,))[0]
        assert largest_gap(run(load_config(c)), RunResult.load(out / f"seed-{seed}")) < 1e-10
    assert main(["run", str(path), "--lockstep"]) == 2  # nothing to walk together
    assert "--lockstep goes with --seeds" in capsys.readouterr().err


def test_frozen_weights_are_each_paths_own():
    """Parameters no path moves differ between seeds: each path's forward uses its own."""
    cs = configs((0, 1), frozen=["1.weight", "1.bias"])
    alone = [run(load_config(c)) for c in cs]
    said: list[str] = []
    got = run_lockstep([load_config(c) for c in cs], say=said.append)
    assert said == []
    for a, b in zip(alone, got, strict=True):
        assert largest_gap(a, b) < 1e-10
        assert accuracies(a) == accuracies(b)


def test_only_a_step_written_beside_its_lockstep_loss_is_stacked():
    from fipframe.builtin.integrators import Gradient, Penalty

    class OwnStep(Penalty):  # a plugin's own step on a built-in's class: not stacked
        def step(self, params, state, problem, scale=1.0):
            return super().step(params, state, problem, scale)

    class OwnSolve(Natural):  # a plugin's own direction (it may change b): not stacked
        def direction(self, *args):
            return super().direction(*args)

    class OwnOperator(Natural):  # its own operator: not stacked
        @staticmethod
        def operator(params, problem):
            return Natural.operator(params, problem)

    class Declares(OwnSolve):  # until it declares the solve again
        def lockstep_solve(self, params, state, problem):
            return super().lockstep_solve(params, state, problem)

    def loss(x):
        return lockstep._declares(x, "lockstep_loss")

    def solve(x):
        return lockstep._declares(x, "lockstep_solve", lockstep.INTEGRATOR_SOLVE)

    assert loss(Gradient(None)) and loss(Penalty(None)) and loss(Natural(None))
    assert not loss(OwnStep(None)) and not solve(OwnStep(None)) and not solve(Penalty(None))
    assert solve(Natural(None)) and solve(Declares(None))
    assert not solve(OwnSolve(None)) and not solve(OwnOperator(None))


def test_solves_on_a_manifold_with_held_weights_stack_among_alike_metrics():
    """Sphere-constrained weights (the tangent projection at each path's own point), the
    first layer held, a damping per path, and one path with another metric: every gradient
    stacks, the solves of the two alike metrics stack, and every path walks what it walks
    alone."""
    cs = configs((0, 1, 2))
    for c, damping, metric in zip(cs, (0.1, 0.3, 0.1), ("kl", "kl", "bhattacharyya"), strict=True):
        for name in ("finetune", "fip"):
            c["branches"].pop(name)
        c["manifold"] = {
            "kind": "product",
            "groups": [{"params": ["*.weight"], "manifold": "sphere"}],
        }
        natural = c["branches"]["natural"][0]
        natural.update(holds=["1.*"], metric=metric)
        natural["integrator"]["damping"] = damping
    alone = [run(load_config(c)) for c in cs]
    said: list[str] = []
    walks = [fipframe.api.build(load_config(c)).walk(notes=lockstep.Notes(said.append)) for c in cs]
    outcomes = lockstep.run_together(walks, say=said.append)
    assert said == []
    steps = cs[0]["stages"][0]["steps"] + cs[0]["branches"]["natural"][0]["steps"]
    assert [o.stacked["step"] for o in outcomes] == [steps] * 3
    solves = cs[0]["branches"]["natural"][0]["steps"]
    assert [o.stacked["solve"] for o in outcomes] == [solves, solves, 0]
    for a, o in zip(alone, outcomes, strict=True):
        assert largest_gap(a, o.value) < 1e-10


class OwnKL(KL):  # a metric with its own product and no word on stacking it
    def mvp(self, forward, params, v):
        return super().mvp(forward, params, v)


class BrokenPaths(KL):  # declares a stacked product that fails (vmap's limits, memory)
    def mvp_paths(self, forward, params, v):
        raise RuntimeError("no batching rule")


class IgnoresSolve(Natural):  # declares a solve (twice the damping) other than its own
    def lockstep_solve(self, params, state, problem):
        spec = super().lockstep_solve(params, state, problem)
        return SolveSpec(2 * spec.damping, spec.iters, spec.tol)


class OwnSolvers:
    @fipframe.hookimpl
    def fipframe_register_metrics(self):
        class Config(KLConfig):
            kind: Literal["own_kl"] = "own_kl"  # type: ignore[assignment]

        class Broken(KLConfig):
            kind: Literal["broken_paths"] = "broken_paths"  # type: ignore[assignment]

        return [
            Spec("own_kl", Config, OwnKL, "KL with its own mvp"),
            Spec("broken_paths", Broken, BrokenPaths, "KL whose stacked product fails"),
        ]

    @fipframe.hookimpl
    def fipframe_register_integrators(self):
        class Config(NaturalConfig):
            kind: Literal["ignores_solve"] = "ignores_solve"  # type: ignore[assignment]

        return [Spec("ignores_solve", Config, IgnoresSolve, "natural, solving alone")]


def test_solves_that_cannot_stack_are_solved_alone_and_said():
    product = lockstep.METRIC_PRODUCT
    assert lockstep._declares(KL(None), "mvp_paths", product)
    assert not lockstep._declares(OwnKL(None), "mvp_paths", product)
    cs = configs((0, 1))
    for c in cs:
        c["branches"]["natural"][0]["metric"] = "own_kl"
        other = copy.deepcopy(c["branches"]["natural"][0])
        other["metric"], other["integrator"]["kind"] = "kl", "ignores_solve"
        c["branches"]["ignores"] = [other]
        broken = copy.deepcopy(c["branches"]["natural"][0])
        broken["metric"] = "broken_paths"
        c["branches"]["broken"] = [broken]
    pm = make_plugin_manager(plugins=[OwnSolvers()], entry_points_enabled=False)
    loaded = [load_config(c, pm=pm) for c in cs]
    alone = [run(c) for c in loaded]
    said: list[str] = []
    walks = [
        fipframe.api.build(c).walk(notes=lockstep.Notes(said.append, f"run {i}"))
        for i, c in enumerate(loaded)
    ]
    outcomes = lockstep.run_together(walks, say=said.append)
    for a, o in zip(alone, outcomes, strict=True):
        assert largest_gap(a, o.value) < 1e-10
        assert o.stacked["solve"] == 1  # offered once to the step that then did not take it
        assert o.stacked["step"] == 180  # the gradients still stack
    assert sorted(said) == sorted(
        [
            f"lockstep: run {i}: natural/second: metric OwnKL has its own mvp or operator but "
            "no mvp_paths (how to stack it); its solves are computed alone"
            for i in (0, 1)
        ]
        + [
            f"lockstep: run {i}: ignores/second: integrator IgnoresSolve did not take the "
            "stacked solve (StepProblem.take_solve or take_spectrum with the gradient or point "
            "it was given and the spec its lockstep_solve says); its solves are computed alone"
            for i in (0, 1)
        ]
        + [  # tried twice, then alone for good
            "lockstep: 2 paths' solve could not be stacked (RuntimeError: no batching rule); "
            "each computes it alone from now on"
        ]
    )


class Draws:
    """A plugin that draws from the global random stream at every chunk end, as a model's
    dropout or a random augmentation would between steps."""

    def __init__(self):
        self.seen: dict[int, list[float]] = {}

    @fipframe.hookimpl
    def fipframe_chunk_end(self, run, step, metrics):
        self.seen.setdefault(run.config.run.seed, []).append(float(torch.rand(())))


def test_interleaved_runs_draw_their_own_random_streams():
    cs = configs((0, 1, 2))
    alone = Draws()
    for c in with_plugin(alone, cs):
        run(c)
    together = Draws()
    got = run_lockstep(with_plugin(together, cs), say=lambda s: None)
    assert all(o is not None for o in got)
    assert [len(v) for v in alone.seen.values()] == [12, 12, 12]  # every chunk end
    assert together.seen == alone.seen
    assert len({x for v in alone.seen.values() for x in v}) == 36  # the draws differ


def test_the_lockstep_example_keeps_the_old_task(tmp_path: Path):
    """docs/examples/lockstep_seeds.py at a reduced size: two seeds walked together, each a
    finished run directory; FIP keeps more of digits 0-4 than fine-tuning on every seed."""
    from tests.integration.test_integrations import _example

    comparison = _example("lockstep_seeds").main(seeds=[0, 1], steps=120, out=str(tmp_path))
    assert all((tmp_path / f"seed-{s}" / "summary.json").is_file() for s in (0, 1))
    for fip, plain in zip(comparison.finals("fip"), comparison.finals("finetune"), strict=True):
        assert fip[0] > plain[0] + 0.2, (fip, plain)  # task 0 kept
        assert fip[1] > 0.8 and plain[1] > 0.8  # task 1 learned by both
