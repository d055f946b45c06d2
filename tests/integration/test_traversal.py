"""End-to-end traversals on real MNIST (small slices), the Path artifact, events and resume."""

from __future__ import annotations

import json
import math
from typing import Literal

import pytest
import torch

import fipframe
from fipframe.api import load_config, run
from fipframe.core import PluginConfig, SecondaryObjective
from fipframe.errors import ConfigError, TraversalError
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.artifact import load_point


class Recorder:
    """A real plugin that records every lifecycle hook call."""

    def __init__(self, stop_after: int | None = None):
        self.calls: list[tuple[str, object]] = []
        self.stop_after = stop_after

    @fipframe.hookimpl
    def fipframe_traversal_start(self, run):
        self.calls.append(("start", run.position.branch))

    @fipframe.hookimpl
    def fipframe_chunk_end(self, run, step, metrics):
        self.calls.append(("chunk", (run.position.branch, run.position.stage_name, step)))
        chunks = sum(1 for c in self.calls if c[0] == "chunk")
        if self.stop_after is not None and chunks == self.stop_after:
            raise KeyboardInterrupt  # what Ctrl-C does, at the same place

    @fipframe.hookimpl
    def fipframe_traversal_end(self, run, result):
        self.calls.append(("end", result))

    @fipframe.hookimpl
    def fipframe_check_config(self, config, registry):
        self.calls.append(("check", config.name))
        return []

    @fipframe.hookimpl
    def fipframe_resolve_adapter(self, model, traversable):
        self.calls.append(("resolve", type(model).__name__))


def end_points(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["branch"]: load_point(run_dir / r["point"]) for r in recs if r["kind"] == "stage_end"}


def test_end_to_end_artifact_and_events(tiny, tmp_path):
    rec = Recorder()
    pm = make_plugin_manager(plugins=[rec])
    config = load_config(tiny, pm=pm)
    tiny["loggers"] = ["csv"]
    result = run(load_config(tiny, pm=pm), out=tmp_path / "run")
    kinds = [c[0] for c in rec.calls]
    assert kinds[:2] == ["check", "check"] and kinds[2] == "start" and kinds[-1] == "end"
    # chunks every 10 steps, the stage end takes the place of the last chunk: 3 stages x 3
    assert kinds.count("chunk") == 9
    assert config.name == "tiny"
    root = tmp_path / "run"
    for name in (
        "config.yaml",
        "plugins.json",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "summary.json",
        "accuracy.png",
        "results.txt",
        "metrics.csv",
    ):
        assert (root / name).is_file(), name
    versions = json.loads((root / "plugins.json").read_text())["plugins"]
    assert versions["fipframe:metrics"]["dist"] == "fipframe"
    recs = [json.loads(x) for x in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    ends = {r["branch"]: r for r in recs if r["kind"] == "stage_end"}
    assert set(ends) == {"trunk", "finetune", "fip"}
    assert ends["fip"]["metrics"]["loss/divergence"] >= 0
    assert ends["fip"]["global_step"] == 60
    # the table and the records agree
    assert result.final["fip"]["task_1 (2-3)"] == ends["fip"]["metrics"]["acc/test/task_1"]
    assert "fip" in result.table() and "start (end of shared stages)" in result.table()
    # a saved point loads and reproduces the recorded accuracy
    assert ends["trunk"]["metrics"]["acc/test/task_0"] > 0.9


def test_fip_keeps_the_old_task_where_finetuning_forgets(tiny, tmp_path):
    for stage in [tiny["stages"][0], *[b[0] for b in tiny["branches"].values()]]:
        stage["steps"] = 60
    result = run(load_config(tiny), out=tmp_path / "r")
    old = {b: result.accuracies(b)[0] for b in ("finetune", "fip")}
    new = {b: result.accuracies(b)[1] for b in ("finetune", "fip")}
    assert old["fip"] > old["finetune"] + 0.3, old
    assert new["fip"] > 0.8, new


def test_resume_after_interrupt_gives_identical_weights(tiny, tmp_path):
    full = tmp_path / "full"
    run(load_config(tiny), out=full)
    part = tmp_path / "part"
    pm = make_plugin_manager(plugins=[Recorder(stop_after=5)])  # stops inside branch 'finetune'
    with pytest.raises(KeyboardInterrupt):
        run(load_config(tiny, pm=pm), out=part)
    # a torn last line, as from a crash mid-write, is ignored
    with (part / "metrics.jsonl").open("a") as f:
        f.write('{"seq": 99, "kind": "chu')
    assert load_point(part / "checkpoint.safetensors")  # last good point is readable
    result = fipframe.resume(part)
    a, b = end_points(full), end_points(part)
    assert set(a) == set(b) == {"trunk", "finetune", "fip"}
    for branch in a:
        for name in a[branch]:
            assert torch.equal(a[branch][name], b[branch][name]), (branch, name)
    seqs = [json.loads(x)["seq"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert seqs == list(range(len(seqs)))  # no duplicated or torn records
    assert result.final == fipframe.RunResult.load(full).final


def test_resume_at_every_chunk_boundary(tiny, tmp_path):
    """Interrupting after each possible chunk and resuming always lands on the same weights."""
    tiny["branches"].pop("finetune")
    tiny["stages"][0]["steps"] = tiny["branches"]["fip"][0]["steps"] = 20
    full = tmp_path / "full"
    run(load_config(tiny), out=full)
    want = end_points(full)
    n_chunks = sum(1 for x in (full / "metrics.jsonl").read_text().splitlines())
    for k in range(1, n_chunks):
        out = tmp_path / f"cut{k}"
        with pytest.raises(KeyboardInterrupt):
            run(
                load_config(tiny, pm=make_plugin_manager(plugins=[Recorder(stop_after=k)])), out=out
            )
        fipframe.resume(out)
        got = end_points(out)
        assert all(torch.equal(got["fip"][n], want["fip"][n]) for n in want["fip"]), k


@pytest.mark.parametrize(
    ("integrator", "keeps", "learns"),
    [
        ({"kind": "natural", "eps": 0.05, "damping": 0.1, "momentum": 0.5}, 0.85, 0.8),
        ({"kind": "projected", "eps": 0.1, "rank": 24, "refresh": 5, "momentum": 0.5}, 0.5, 0.8),
    ],
    ids=["natural", "projected"],
)
def test_geometric_steps_learn_keep_and_resume_exactly(tiny, tmp_path, integrator, keeps, learns):
    second = tiny["branches"]["fip"][0]
    tiny["branches"] = {
        "finetune": [dict(tiny["branches"]["finetune"][0], steps=40)],
        "geo": [dict(second, integrator=integrator, steps=40)],
    }
    full = tmp_path / "full"
    result = run(load_config(tiny), out=full)
    old, new = result.accuracies("geo")
    forgot = result.accuracies("finetune")[0]
    # keep: the old task survives the geometric step; the same steps of fine-tuning erase it
    assert old >= keeps and forgot <= 0.1, (old, forgot)
    assert new >= learns, new  # and the new task is learned
    geo = [
        r for r in result.records if r["branch"] == "geo" and r["kind"] in ("chunk", "stage_end")
    ]
    assert geo[-1]["metrics"]["path/drift"] > 0  # functional drift on stored inputs, logged
    assert "loss/divergence" not in geo[-1]["metrics"]  # these rules never compute the penalty
    if integrator["kind"] == "natural":  # every chunk's solves converged at the default tolerance
        assert all(r["metrics"]["cg/capped"] == 0.0 for r in geo), geo
        assert all(r["metrics"]["cg/residual"] <= 1e-2 for r in geo)
    # interrupted inside the geometric branch (trunk 3 chunks, fine-tuning 4, then geo): its
    # momentum and (projected) cached basis come back from the checkpoint
    cut = tmp_path / "cut"
    recorder = Recorder(stop_after=9)
    with pytest.raises(KeyboardInterrupt):
        run(load_config(tiny, pm=make_plugin_manager(plugins=[recorder])), out=cut)
    assert recorder.calls[-1][1][0] == "geo", recorder.calls[-1]
    fipframe.resume(cut)
    a, b = end_points(full)["geo"], end_points(cut)["geo"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_steps_roll_back_then_fail_clearly(tiny, tmp_path):
    tiny["branches"] = {}
    tiny["stages"][0]["integrator"] = {"kind": "gradient", "lr": 1e30, "optimizer": {"name": "sgd"}}
    tiny["run"]["max_rollbacks"] = 2
    with pytest.raises(TraversalError, match="non-finite values at step 10 after 2 rollbacks"):
        run(load_config(tiny), out=tmp_path / "nan")
    assert load_point(tmp_path / "nan" / "checkpoint.safetensors")  # start point, readable


class BarrierPlugin:
    """An objective ``log(R - t)``, t the distance travelled along a fixed direction: descent
    moves toward t = R ever faster, and a step that jumps past R makes the loss NaN."""

    class Config(PluginConfig):
        kind: Literal["barrier"] = "barrier"

    class Barrier(SecondaryObjective):
        def bind(self, ctx):
            self.start = ctx.anchor
            g = torch.Generator().manual_seed(0)
            u = {k: torch.randn(v.shape, generator=g) for k, v in ctx.anchor.items()}
            n = sum(x.square().sum() for x in u.values()).sqrt()
            self.u = {k: x / n for k, x in u.items()}

        def loss(self, params, logits, batch):
            t = sum(((params[k] - self.start[k]) * self.u[k]).sum() for k in params)
            return torch.log(1.0 - t)

    @fipframe.hookimpl
    def fipframe_register_objectives(self):
        return [fipframe.Spec("barrier", self.Config, self.Barrier, "log barrier")]


def test_rollback_recovers_with_a_smaller_step(tiny, tmp_path):
    tiny["branches"] = {}
    tiny["stages"][0]["integrator"] = {
        "kind": "gradient",
        "lr": 0.2,
        "optimizer": {"name": "sgd", "momentum": 0.0},
    }
    tiny["stages"][0]["objectives"] = ["barrier"]
    tiny["run"]["max_rollbacks"] = 10
    pm = make_plugin_manager(plugins=[BarrierPlugin()])
    result = run(load_config(tiny, pm=pm), out=tmp_path / "rb")
    scales = [r["metrics"]["step_scale"] for r in result.records]
    assert scales[-1] < 1.0
    assert scales == sorted(scales, reverse=True)  # halvings only ever accumulate
    assert all(math.isfinite(r["metrics"]["loss/total"]) for r in result.records)


def test_refuses_to_overwrite_and_reports_unwritable(tiny, tmp_path):
    run(load_config(tiny), out=tmp_path / "r")
    with pytest.raises(ConfigError, match="already holds a run; resume it with --resume"):
        run(load_config(tiny), out=tmp_path / "r")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="out: cannot write to"):
        run(load_config(tiny), out=blocker / "sub")


def test_example_plugin_end_to_end(tiny, tmp_path):
    tiny["model"] = {"kind": "lenet5"}
    tiny["branches"].pop("finetune")
    fip = tiny["branches"]["fip"][0]
    tiny["stages"][0]["steps"] = fip["steps"] = 60
    fip["metric"] = {"kind": "tempered_kl", "temperature": 2.0}
    fip["objectives"] = ["task_ce", {"kind": "weight_decay_to_start", "weight": 1e-3}]
    result = run(load_config(tiny), out=tmp_path / "ex")
    end = [r for r in result.records if r["branch"] == "fip" and r["kind"] == "stage_end"][0]
    assert end["metrics"]["loss/weight_decay_to_start"] > 0
    assert end["metrics"]["acc/test/task_1"] > 0.8
    assert end["metrics"]["acc/test/task_0"] > 0.8


def test_user_model_goes_through_resolve_adapter(tiny):
    rec = Recorder()
    pm = make_plugin_manager(plugins=[rec])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    tiny["branches"] = {}
    result = fipframe.build(load_config(tiny, pm=pm), model=model).run()
    assert ("resolve", "Sequential") in rec.calls
    assert result.accuracies("trunk")[0] > 0.9


def test_cnn_traversal_with_a_scheduled_step(tiny, tmp_path):
    tiny["model"] = {"kind": "small_cnn", "channels": [8, 16], "hidden": 32}
    tiny["branches"].pop("finetune")
    fip = tiny["branches"]["fip"][0]
    fip["integrator"]["lr"] = {"start": 0.01, "end": 0.0, "shape": "cosine"}
    tiny["stages"][0]["steps"] = fip["steps"] = 60
    result = run(load_config(tiny), out=tmp_path / "cnn")
    assert result.accuracies("trunk")[0] > 0.9
    old, new = result.accuracies("fip")
    assert old > 0.9 and new > 0.8


def test_demo_preset_meets_its_claims(tmp_path):
    """The README's demo, seed 0 (about a minute): FIP, reading only the stored images, keeps
    more of digits 0-4 than replay, which also reads their labels; both learn 5-9; fine-tuning
    forgets 0-4."""
    result = run(load_config(preset="split-mnist"), out=tmp_path / "demo")
    fine, fip, er = (result.accuracies(b) for b in ("finetune", "fip", "replay"))
    assert fine[0] < 0.05 and fip[0] > 0.85 and fip[1] > 0.95 and er[1] > 0.95
    assert fip[0] > er[0], (fip, er)


def test_stored_logit_anchor_differs_from_the_stage_start_and_resumes(tiny, tmp_path):
    """Three tasks: in the last stage the 'stored' anchor compares task 0's inputs with the
    outputs recorded after task 0, while 'stage_start' compares with the network after task 1."""
    tiny["data"]["tasks"] = [[0, 1], [2, 3], [4, 5]]
    second = dict(tiny["branches"]["fip"][0])
    third = dict(second, name="third", task=2)
    tiny["branches"] = {
        "start": [second, third],
        "stored": [dict(second, anchor="stored"), dict(third, anchor="stored")],
    }
    full = tmp_path / "full"
    result = run(load_config(tiny), out=full)
    drifts = {
        b: [
            r["metrics"]["path/drift"]
            for r in result.records
            if r["branch"] == b and r["stage"] == "third"
        ]
        for b in ("start", "stored")
    }
    # the stored outputs predate task 1, so the network starts the stage already away from them
    assert drifts["stored"][0] > drifts["start"][0]
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):  # stop inside the 'stored' branch's last stage
        run(load_config(tiny, pm=make_plugin_manager(plugins=[Recorder(stop_after=13)])), out=cut)
    fipframe.resume(cut)
    a, b = end_points(full)["stored"], end_points(cut)["stored"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stored_anchor_needs_a_metric(tiny):
    tiny["branches"]["finetune"][0]["anchor"] = "stored"
    with pytest.raises(ConfigError, match=r"finetune\[0\].anchor: 'stored' compares outputs"):
        load_config(tiny)


def test_sum_reduction_is_the_mean_at_alpha_times_the_memory_batch(tiny, tmp_path):
    """The authors' CE_mean + lambda1 * sum over stored inputs, through the engine: at
    alpha / memory_batch with reduction sum the path is bit for bit the mean's at alpha (two
    runs, the same branch name, so the same batches)."""
    fip = tiny["branches"]["fip"][0]  # memory_batch 32, alpha 5 (mean)
    summed = dict(fip, integrator=dict(fip["integrator"], alpha=5.0 / 32, reduction="sum"))
    tiny["branches"] = {"fip": [fip]}
    run(load_config(tiny), out=tmp_path / "mean")
    tiny["branches"] = {"fip": [summed]}
    run(load_config(tiny), out=tmp_path / "sum")
    mean, summed_end = end_points(tmp_path / "mean"), end_points(tmp_path / "sum")
    assert all(torch.equal(mean["fip"][k], summed_end["fip"][k]) for k in mean["fip"])
    start = mean["trunk"]
    assert any(not torch.equal(start[k], summed_end["fip"][k]) for k in start)  # it moved
