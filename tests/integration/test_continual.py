"""Continual-learning methods as objectives: behaviour on real MNIST, exact resume, oracles."""

from __future__ import annotations

import copy
import json
from typing import Literal

import pytest
import torch

import fipframe
from fipframe.api import load_config, run
from fipframe.builtin.continual import EWC, SI, EWCConfig, SIConfig
from fipframe.core.configs import PluginConfig
from fipframe.core.objective import Batch, SecondaryObjective
from fipframe.data.task import Split
from fipframe.errors import TraversalError
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.artifact import load_point

from .test_traversal import Recorder, end_points

SEQ = {
    "name": "seq",
    "model": {"kind": "mlp", "hidden": [32]},
    "data": {
        "kind": "split_mnist",
        "tasks": [[0, 1], [2, 3], [4, 5]],
        "train_limit": 600,
        "eval_limit": 200,
    },
    "memory": {"size": 90},
    "run": {"seed": 1, "chunk": 40, "progress": "off"},
}


def _stage(task, objectives, steps=80, **kw):
    return {
        "name": f"t{task}",
        "task": task,
        "steps": steps,
        "batch_size": 32,
        "memory_batch": 32,
        "integrator": kw.pop("integrator", {"kind": "gradient", "lr": 0.01}),
        "objectives": objectives,
        **kw,
    }


def _config(methods, trunk_objectives=("task_ce",), **data):
    cfg = copy.deepcopy(SEQ)
    cfg["data"].update(data)
    cfg["stages"] = [_stage(0, list(trunk_objectives))]
    cfg["branches"] = {m: [_stage(t, objs) for t in (1, 2)] for m, objs in methods.items()}
    return cfg


def test_every_method_runs_and_methods_that_remember_keep_more(tmp_path):
    methods = {
        "finetune": ["task_ce"],
        "joint": ["joint_ce"],
        "ewc": ["task_ce", {"kind": "ewc", "weight": 100.0, "samples": 64}],
        "si": ["task_ce", "si"],
        "lwf": ["task_ce", "lwf"],
        "er": ["task_ce", "replay_ce"],
        "derpp": ["task_ce", {"kind": "der", "weight": 0.5}, "replay_ce"],
    }
    result = run(
        load_config(_config(methods, ("task_ce", {"kind": "si", "weight": 0.0}))),
        out=tmp_path / "r",
    )
    acc = {m: result.continual(m)["acc"] for m in methods}
    # class-incremental: fine-tuning keeps only the last task; labelled memory keeps much more
    assert acc["finetune"] < 0.4, acc
    for m in ("joint", "er", "derpp"):
        assert acc[m] > acc["finetune"] + 0.25, (m, acc)
    assert acc["joint"] >= max(acc.values()) - 0.05, acc
    # the accuracy matrix: three rows (one per learned task), task 2 learned last
    learned, rows = result.matrix("er")
    assert learned == [0, 1, 2] and len(rows) == 3 and rows[2][2] > 0.8
    cl = result.continual("finetune")
    assert cl["forgetting"] > 0.8 and cl["bwt"] < -0.8
    # by hand from the matrix: BWT = mean_j<last (R[last][j] - R[j][j])
    _, r = result.matrix("finetune")
    assert cl["bwt"] == pytest.approx(((r[2][0] - r[0][0]) + (r[2][1] - r[1][1])) / 2)
    assert cl["acc"] == pytest.approx(sum(r[2]) / 3)
    table = result.table()
    assert "backward transfer" in table and f"{100 * cl['bwt']:.2f}" in table
    # EWC and SI recorded their per-task state with each stage end and it reloads
    recs = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    carry = {r["branch"]: r["carry"] for r in recs if r["kind"] == "stage_end" and "carry" in r}
    ewc = load_point(tmp_path / "r" / carry["ewc"])
    # a Fisher and an anchor per earlier task (and the trunk's SI state, which every branch gets)
    assert {tuple(k.split("/")[:3:2]) for k in ewc if k.startswith("ewc/")} == {
        ("ewc", "fisher"),
        ("ewc", "anchor"),
    }
    assert {k.split("/")[1] for k in ewc if k.startswith("ewc/")} == {"0", "1"}
    si = load_point(tmp_path / "r" / carry["si"])
    assert all(torch.isfinite(v).all() for v in si.values())


def test_task_incremental_scores_each_task_among_its_own_classes(tmp_path):
    methods = {"finetune": ["task_ce"]}
    cls = run(load_config(_config(methods)), out=tmp_path / "c")
    task = run(load_config(_config(methods, scenario="task")), out=tmp_path / "t")
    old_cls = cls.accuracies("finetune")[0]
    old_task = task.accuracies("finetune")[0]
    # with the task known, an old binary task is still well above chance after fine-tuning
    assert old_cls < 0.2 and old_task > 0.6, (old_cls, old_task)


@pytest.mark.parametrize("method", ["si", "ewc"])
def test_path_state_resumes_exactly(tmp_path, method):
    objs = {
        "si": ["task_ce", {"kind": "si", "weight": 1.0}],
        "ewc": ["task_ce", {"kind": "ewc", "samples": 64}],
    }[method]
    trunk = ("task_ce", {"kind": "si", "weight": 0.0}) if method == "si" else ("task_ce",)
    cfg = _config({method: objs, "other": ["task_ce"]}, trunk)
    full = tmp_path / "full"
    run(load_config(cfg), out=full)
    want = end_points(full)
    for k in (3, 5, 7):  # inside the trunk, inside the branch's first and second stages
        out = tmp_path / f"cut{k}"
        pm = make_plugin_manager(plugins=[Recorder(stop_after=k)])
        with pytest.raises(KeyboardInterrupt):
            run(load_config(cfg, pm=pm), out=out)
        fipframe.resume(out)
        got = end_points(out)
        for branch in want:
            assert all(torch.equal(got[branch][n], want[branch][n]) for n in want[branch]), k


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def test_ewc_fisher_matches_a_dense_oracle():
    from types import SimpleNamespace

    from fipframe.core.adapter import ArchitectureAdapter

    model = _tiny_model().double()
    adapter = ArchitectureAdapter(model)
    x = torch.randn(10, 5, dtype=torch.float64)
    point = adapter.params()
    task = SimpleNamespace(train=Split(x, torch.zeros(len(x), dtype=torch.long)))
    ctx = SimpleNamespace(tasks=SimpleNamespace(tasks=[task]), adapter=adapter)
    got = EWC(EWCConfig(samples=10, chunk=3, fisher="exact"))._fisher(ctx, _kl(), 0, point)
    # oracle: mean_x J^T (diag p - p p^T) J, its diagonal
    names = list(point)
    flat = torch.cat([point[n].reshape(-1) for n in names])

    def f(w, xi):
        parts, i = {}, 0
        for n in names:
            parts[n] = w[i : i + point[n].numel()].reshape(point[n].shape)
            i += point[n].numel()
        return torch.func.functional_call(model, parts, (xi[None],))[0]

    want = torch.zeros_like(flat)
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda w, xi=xi: f(w, xi), flat)
        p = torch.softmax(f(flat, xi), -1)
        h = torch.diag(p) - torch.outer(p, p)
        want += torch.diagonal(jac.T @ h @ jac)
    want /= len(x)
    torch.testing.assert_close(torch.cat([got[n].reshape(-1) for n in names]), want)


def test_ewc_sampled_fisher_is_unbiased():
    from types import SimpleNamespace

    from fipframe.core.adapter import ArchitectureAdapter

    adapter = ArchitectureAdapter(_tiny_model().double())
    x = torch.randn(4, 5, dtype=torch.float64).repeat(1000, 1)  # 4 inputs, 1000 draws each
    ctx = SimpleNamespace(
        tasks=SimpleNamespace(
            tasks=[SimpleNamespace(train=Split(x, torch.zeros(len(x), dtype=torch.long)))]
        ),
        adapter=adapter,
    )
    point = adapter.params()
    exact = EWC(EWCConfig(samples=4, fisher="exact"))._fisher(ctx, _kl(), 0, point)
    sampled = EWC(EWCConfig(samples=4000, chunk=500))._fisher(ctx, _kl(), 0, point)
    for name in exact:
        err = (sampled[name] - exact[name]).norm() / exact[name].norm()
        assert err < 0.1, (name, float(err))


def _kl():
    from fipframe.builtin.metrics import KL, KLConfig

    return KL(KLConfig())


def test_si_importance_is_the_damped_path_integral():
    params = {"w": torch.tensor([0.0, 1.0])}
    ctx = type("C", (), {})()
    ctx.adapter = type("A", (), {"names": ("w",)})()
    ctx.anchor, ctx.carry = params, {}
    si = SI(SIConfig(xi=0.5))
    si.bind(ctx)
    moves = [
        (torch.tensor([0.1, 0.0]), torch.tensor([-1.0, 2.0])),
        (torch.tensor([0.2, -0.1]), torch.tensor([-0.5, 1.0])),
    ]
    w = params["w"]
    for delta, grad in moves:
        si.observe({"w": w}, {"w": w + delta}, {"w": grad})
        w = w + delta
    si.finish({"w": w}, ctx.carry)
    work = -(moves[0][1] * moves[0][0] + moves[1][1] * moves[1][0])
    want = work / ((w - params["w"]) ** 2 + 0.5)
    torch.testing.assert_close(ctx.carry["si/omega/w"], want)
    # the next stage's penalty is sum omega (w - w_end)^2
    si2 = SI(SIConfig())
    ctx.anchor = {"w": w}
    si2.bind(ctx)
    probe = {"w": w + 1.0}
    torch.testing.assert_close(si2.loss(probe, None, None), want.sum())


@pytest.mark.parametrize(
    "model",
    [
        {"kind": "small_cnn", "channels": [8, 16], "hidden": 32},
        {"kind": "vit", "layers": 1, "heads": 2, "hidden": 32, "mlp": 64},
    ],
    ids=["small_cnn", "vit"],
)
def test_fip_keeps_the_old_task_on_a_cnn_and_a_vision_transformer(tiny, tmp_path, model):
    tiny["model"] = model
    for stage in [tiny["stages"][0], *[b[0] for b in tiny["branches"].values()]]:
        stage["steps"] = 100
        stage["integrator"]["lr"] = 3e-3
    tiny["branches"]["fip"][0]["integrator"]["alpha"] = 1.0
    result = run(load_config(tiny), out=tmp_path / "r")
    start = result.accuracies("trunk")[0]
    old = {b: result.accuracies(b)[0] for b in ("finetune", "fip")}
    new = {b: result.accuracies(b)[1] for b in ("finetune", "fip")}
    assert start > 0.9, start
    assert old["fip"] > old["finetune"] + 0.3, old
    # the new task is learned at a comparable pace (the small ViT learns slowly either way)
    assert new["fip"] > 0.75 * new["finetune"] and new["finetune"] > 0.6, new


def test_ewc_folds_every_task_into_one_quadratic_without_changing_it():
    """sum_t 1/2 F_t (w - w_t)^2, evaluated as one completed square, value and gradient."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    shapes = {"a": (5, 3), "b": (4,)}
    carry = {}
    for t in range(3):
        for n, shape in shapes.items():
            fisher = torch.rand(shape, dtype=torch.float64)
            fisher[0] = 0  # parameters no task cares about
            carry[f"ewc/{t}/fisher/{n}"] = fisher
            carry[f"ewc/{t}/anchor/{n}"] = torch.randn(shape, dtype=torch.float64)
    ctx = SimpleNamespace(
        ends=[(t, None) for t in range(3)],
        carry=carry,
        adapter=SimpleNamespace(names=tuple(shapes)),
    )
    ewc = EWC(EWCConfig())
    ewc.bind(ctx)
    w = {n: torch.randn(s, dtype=torch.float64, requires_grad=True) for n, s in shapes.items()}
    want = sum(
        0.5 * (carry[f"ewc/{t}/fisher/{n}"] * (w[n] - carry[f"ewc/{t}/anchor/{n}"]).square()).sum()
        for t in range(3)
        for n in shapes
    )
    got = ewc.loss(w, None, None)
    torch.testing.assert_close(got, want)
    for a, b in zip(
        torch.autograd.grad(got, list(w.values())),
        torch.autograd.grad(want, list(w.values())),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_lwf_shares_task_ce_forward(tmp_path):
    """LwF distils on task_ce's own batches: one forward of the batch, not two."""
    ends = {}
    for name, objs in {
        "ce": ["task_ce"],
        "lwf0": ["task_ce", {"kind": "lwf", "weight": 0.0}],
        "lwf": ["task_ce", "lwf"],
    }.items():
        cfg = _config({"b": objs})
        cfg["branches"]["b"] = cfg["branches"]["b"][:1]
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
        torch.manual_seed(0)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
        rows: list[int] = []
        model.register_forward_pre_hook(
            lambda m, args, rows=rows: rows.append(args[0].shape[0]) if m.training else None
        )
        run(load_config(cfg), out=tmp_path / name, model=model)
        # every training forward (trunk and branch) holds one batch of 32 rows
        assert rows and set(rows) == {32}, (name, sorted(set(rows)))
        ends[name] = end_points(tmp_path / name)["b"]
    # a zero-weight LwF adds nothing: the same forward, the same end point, bit for bit
    assert all(torch.equal(ends["lwf0"][k], ends["ce"][k]) for k in ends["ce"])
    assert not all(torch.equal(ends["lwf"][k], ends["ce"][k]) for k in ends["ce"])


class HalfBatchPlugin:
    """An objective that claims task_ce's key but draws half as many rows: a broken plugin."""

    class Config(PluginConfig):
        kind: Literal["half_batch"] = "half_batch"

    class HalfBatch(SecondaryObjective):
        def bind(self, ctx):
            self.x = ctx.task.train.x
            self.sampler = ctx.sampler("task_ce", len(self.x), ctx.batch_size // 2)

        def sample(self, step):
            return Batch(self.x[self.sampler.indices(step)], key=("task", "task_ce"))

        def loss(self, params, logits, batch):
            return logits.square().mean()

    @fipframe.hookimpl
    def fipframe_register_objectives(self):
        return [fipframe.Spec("half_batch", self.Config, self.HalfBatch, "broken key")]


def test_a_key_shared_by_different_inputs_is_refused(tmp_path):
    cfg = _config({"b": ["task_ce", "half_batch"]})
    pm = make_plugin_manager(plugins=[HalfBatchPlugin()])
    with pytest.raises(
        TraversalError,
        match=r"objective half_batch: batch key .*\[32, 1, 28, 28\].*"
        r"\[16, 1, 28, 28\]",
    ):
        run(load_config(cfg, pm=pm), out=tmp_path / "r")
