"""Paths between networks on real MNIST: the curves' math, a FIP that reaches a second network,
path evaluation with BatchNorm recomputed, and refusals of end points that do not match."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import fipframe
from fipframe.core.params import norm, sub_tree
from fipframe.errors import ConfigError, RunDirError
from fipframe.eval import paths as P
from fipframe.eval.points import path_points, read_point, save_point

DIGITS = list(range(10))


def net_config(seed: int, *, bn: bool = False, steps: int = 120) -> dict:
    return {
        "model": {"kind": "small_cnn", "channels": [4, 8], "hidden": 16, "batch_norm": bn},
        "data": {"kind": "split_mnist", "tasks": [DIGITS], "train_limit": 1500, "eval_limit": 300},
        "memory": {"size": 128},
        "run": {"seed": seed, "chunk": 20, "progress": "off"},
        "stages": [
            {
                "name": "train",
                "task": 0,
                "steps": steps,
                "batch_size": 64,
                "integrator": {"kind": "gradient", "lr": 3e-3},
                "objectives": ["task_ce"],
            }
        ],
    }


@pytest.fixture(scope="module")
def ends(tmp_path_factory):
    """Two small CNNs trained on all ten digits from different initialisations."""
    root = tmp_path_factory.mktemp("ends")
    for name, seed in (("a", 0), ("b", 1)):
        fipframe.run(net_config(seed), out=root / name)
    return root


def connect_config(ends: Path, weight: float = 1.0) -> dict:
    cfg = net_config(0)
    cfg["run"].update(init=str(ends / "a"), save_every=20)
    cfg["memory"]["learned"] = [0]  # A knows the task: its outputs on stored inputs are kept
    cfg["stages"] = [
        {
            "name": "connect",
            "task": 0,
            "steps": 160,
            "batch_size": 64,
            "memory_batch": 64,
            "integrator": {
                "kind": "penalty",
                "lr": 1e-2,
                "alpha": 1.0,
                "optimizer": {"name": "sgd", "momentum": 0.9},
            },
            "metric": "kl",
            "objectives": [
                "task_ce",
                {
                    "kind": "to_network",
                    "target": str(ends / "b"),
                    "weight": {"start": 0.0, "end": weight},
                },
            ],
        }
    ]
    return cfg


def test_curves_pass_through_their_ends_and_bend():
    g = torch.Generator().manual_seed(0)
    a, th, b = ({"w": torch.randn(3, 2, generator=g)} for _ in range(3))
    for kind in ("bezier", "polychain"):
        c = P.Curve(kind, a, th, b)
        assert torch.equal(c(0.0)["w"], a["w"]) and torch.allclose(c(1.0)["w"], b["w"])
    assert torch.allclose(
        P.Curve("bezier", a, th, b)(0.5)["w"], (a["w"] + 2 * th["w"] + b["w"]) / 4
    )
    assert torch.allclose(P.Curve("polychain", a, th, b)(0.5)["w"], th["w"])
    assert torch.allclose(P.linear(a, b)(0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])
    # through(): knots at the points, spaced by Euclidean length
    pts = [a, th, b]
    path = P.through(pts)
    d1, d2 = float(norm(sub_tree(th, a))), float(norm(sub_tree(b, th)))
    t1 = d1 / (d1 + d2)
    assert path.knots == pytest.approx([0.0, t1, 1.0])
    assert torch.allclose(path(t1)["w"], th["w"], atol=1e-6)
    assert P.barrier([{"loss": 1.0}, {"loss": 3.0}, {"loss": 2.0}]) == pytest.approx(1.5)


def test_a_fip_reaches_the_second_network_without_the_linear_barrier(ends, tmp_path):
    a, b = read_point(ends / "a"), read_point(ends / "b")
    result = fipframe.run(connect_config(ends), out=tmp_path / "fip")
    points = path_points(tmp_path / "fip", "trunk")
    assert [p.meta["step"] for p in points] == list(range(20, 161, 20))  # saved every 20 steps
    end = points[-1].params
    gap = float(norm(sub_tree(end, b.params)) / norm(sub_tree(a.params, b.params)))
    assert gap < 0.1, gap  # the pull ramps up: the path ends next to B
    traversal = fipframe.build(connect_config(ends))
    ev = traversal.evaluator
    linear = P.evaluate_path(ev, P.linear(a.params, b.params), 7)
    fip = P.evaluate_path(ev, P.through([a.params] + [p.params for p in points] + [b.params]), 7)
    # both paths start at A and end at B
    assert linear[0]["acc"] == pytest.approx(fip[0]["acc"])
    assert linear[-1]["acc"] == pytest.approx(fip[-1]["acc"])
    assert linear[0]["acc"] > 0.8 and linear[-1]["acc"] > 0.8
    assert P.barrier(linear, "error") > 0.2  # two networks from different initialisations
    assert P.barrier(fip, "error") < 0.5 * P.barrier(linear, "error")
    assert result.final["trunk"]["task_0 (0..9)"] > 0.8
    drift = [r["metrics"]["loss/divergence"] for r in result.records if r["kind"] == "chunk"]
    assert len(drift) == 7 and all(d > 0 for d in drift)  # the invariance term is at work
    written = P.plot_paths({"linear": linear, "fip": fip}, tmp_path / "paths.png")
    assert [p.suffix for p in written] == [".png", ".svg"] and all(
        p.stat().st_size for p in written
    )


def test_a_trained_curve_lowers_the_barrier_of_the_straight_line(ends):
    a, b = read_point(ends / "a").params, read_point(ends / "b").params
    tr = fipframe.build(net_config(0))
    losses = []
    curve = P.train_curve(
        "bezier",
        a,
        b,
        tr.adapter,
        tr.tasks,
        steps=150,
        lr=3e-3,
        progress=lambda s, l: losses.append(l),
    )
    assert len(losses) == 150
    assert not any(v.requires_grad for v in curve.theta.values())
    ev = tr.evaluator
    straight = P.evaluate_path(ev, P.linear(a, b), 5)
    bent = P.evaluate_path(ev, curve, 5)
    assert P.barrier(bent) < 0.5 * P.barrier(straight)


def test_path_evaluation_recomputes_batchnorm_at_every_point(tmp_path):
    fipframe.run(net_config(0, bn=True, steps=60), out=tmp_path / "a")
    fipframe.run(net_config(1, bn=True, steps=60), out=tmp_path / "b")
    a, b = read_point(tmp_path / "a"), read_point(tmp_path / "b")
    assert a.buffers  # the run saved its statistics with the end point
    tr = fipframe.build(net_config(0, bn=True))
    ev = tr.evaluator
    before = ev.buffers()
    line = P.linear(a.params, b.params)
    ts = [0.25, 0.5, 0.75]
    rows = P.evaluate_path(ev, line, ts)
    after = ev.buffers()
    assert all(torch.equal(before[n], after[n]) for n in before)  # the module's own put back
    for t, row in zip(ts, rows, strict=True):  # each point with statistics of its own
        ev.recompute_batchnorm(line(t), 0, 128)
        assert row["acc"] == pytest.approx(ev.evaluate(line(t))["acc/test/task_0"], abs=1e-6)
    # the midpoint with the end point A's statistics instead of its own
    ev.load_buffers(a.buffers)
    stale = ev.evaluate(line(0.5))["acc/test/task_0"]
    assert rows[1]["acc"] != pytest.approx(stale, abs=1e-3)
    with pytest.raises(ConfigError, match="the ends"):
        P.barrier(rows)
    no_bn = net_config(0, bn=True)
    no_bn["run"]["bn_batches"] = 0
    with pytest.raises(ConfigError, match="run.bn_batches is 0"):
        P.evaluate_path(fipframe.build(no_bn).evaluator, line, 3)


def test_end_points_of_another_architecture_are_refused_before_anything_is_written(ends, tmp_path):
    other = net_config(0)
    other["model"]["hidden"] = 24
    fipframe.run(other, out=tmp_path / "wide")
    bad = connect_config(ends)
    bad["stages"][0]["objectives"][1]["target"] = str(tmp_path / "wide")
    with pytest.raises(ConfigError, match=r"stages\[0\]\.objectives\[1\]\.target.*shapes differ"):
        fipframe.run(bad, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    bad["stages"][0]["objectives"][1]["target"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no such point file or run directory"):
        fipframe.run(bad, out=tmp_path / "never")
    init = connect_config(ends)
    init["run"]["init"] = str(tmp_path / "wide")
    with pytest.raises(ConfigError, match=r"run\.init.*not a point of this model"):
        fipframe.run(init, out=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    init["run"]["init"] = str(ends / "a")
    init["memory"]["learned"] = [3]
    with pytest.raises(ConfigError, match=r"memory\.learned: task 3 is out of range"):
        fipframe.build(init)
    init["memory"]["learned"] = [0]
    # a plain state dict of another model: unknown names
    path = tmp_path / "plain.safetensors"
    save_point(path, {"fc.weight": torch.zeros(2, 2)})
    init["run"]["init"] = str(path)
    with pytest.raises(ConfigError, match="missing"):
        fipframe.build(init)
    a, b = read_point(ends / "a").params, read_point(tmp_path / "wide").params
    with pytest.raises(ConfigError, match="not points of one architecture"):
        P.linear(a, b)
    with pytest.raises(ConfigError, match="not points of one architecture"):
        P.Curve("bezier", a, copy.deepcopy(a), b)


def test_run_init_starts_from_a_state_dict_file(ends, tmp_path):
    from safetensors.torch import save_file

    tr = fipframe.build(net_config(0))
    model = tr.adapter.model
    fipframe.eval.RunResult.load(ends / "b").load_into(model)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "b.safetensors"
    )
    cfg = net_config(5)
    cfg["run"]["init"] = str(tmp_path / "b.safetensors")
    started = fipframe.build(cfg)
    b = read_point(ends / "b").params
    assert all(torch.equal(started.adapter.params()[n], b[n]) for n in b)


def test_a_run_from_a_trained_network_resumes_exactly(ends, tmp_path):
    from fipframe.api import load_config
    from fipframe.plugins import make_plugin_manager

    from .test_traversal import Recorder

    cfg = connect_config(ends)
    cfg["stages"][0]["steps"] = 60
    whole = fipframe.run(cfg, out=tmp_path / "whole")
    pm = make_plugin_manager(plugins=[Recorder(stop_after=2)])
    with pytest.raises(KeyboardInterrupt):
        fipframe.run(load_config(cfg, pm=pm), out=tmp_path / "cut")
    with pytest.raises(RunDirError, match="cannot resume: run.init"):  # its start is fixed
        fipframe.resume(tmp_path / "cut", overrides=[f"run.init={ends / 'b'}"])
    again = fipframe.resume(tmp_path / "cut")
    a, b = whole.point("trunk"), again.point("trunk")
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)


def test_to_network_scales_and_diversity_radius(ends):
    from types import SimpleNamespace

    from fipframe.builtin.paths import Diversity, DiversityConfig, ToNetwork, ToNetworkConfig

    a, b = read_point(ends / "a").params, read_point(ends / "b").params
    gap = float(sum((a[n] - b[n]).square().sum() for n in a))
    for scale, at_a in (("relative", 0.5), ("absolute", 0.5 * gap)):
        obj = ToNetwork(ToNetworkConfig(target=str(ends / "b"), scale=scale))
        obj.bind(SimpleNamespace(anchor=a))
        assert float(obj.loss(a, None, None)) == pytest.approx(at_a, rel=1e-4)
        assert float(obj.loss(b, None, None)) == 0.0
    hinge = Diversity(DiversityConfig(radius=1.0))
    hinge.bind(SimpleNamespace(ends=[(0, a)], anchor=a))
    assert float(hinge.loss(a, None, None)) == pytest.approx(1.0, abs=1e-2)  # at the member
    assert float(hinge.loss(b, None, None)) == 0.0  # farther than the radius: no push
    push = Diversity(DiversityConfig(members=1))
    push.bind(SimpleNamespace(ends=[(0, b), (0, a)], anchor=a))  # only the last member repels
    assert float(push.loss(b, None, None)) == pytest.approx(-(gap**0.5), rel=1e-2)


def test_a_target_replaced_during_a_run_is_refused_on_resume(ends, tmp_path):
    from fipframe.api import load_config
    from fipframe.plugins import make_plugin_manager

    from .test_traversal import Recorder

    target = tmp_path / "target.safetensors"
    save_point(target, read_point(ends / "b").weights())
    cfg = connect_config(ends)
    cfg["stages"][0]["steps"] = 60
    cfg["stages"][0]["objectives"][1]["target"] = str(target)
    pm = make_plugin_manager(plugins=[Recorder(stop_after=2)])
    with pytest.raises(KeyboardInterrupt):
        fipframe.run(load_config(cfg, pm=pm), out=tmp_path / "cut")
    save_point(target, read_point(ends / "a").weights())  # another network at the same path
    with pytest.raises(ConfigError, match="is not the network this run started toward"):
        fipframe.resume(tmp_path / "cut")
    save_point(target, read_point(ends / "b").weights())  # put back: the run goes on
    assert fipframe.resume(tmp_path / "cut").finished("trunk")
