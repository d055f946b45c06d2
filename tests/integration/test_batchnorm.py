"""BatchNorm statistics follow the path: exact resume, rollback, and the saved network."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import fipframe
from fipframe.api import load_config
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.artifact import load_point

from .test_traversal import BarrierPlugin, Recorder


def all_ends(run_dir):
    """Every stage end's point and buffers, by (branch, stage)."""
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for r in recs:
        if r["kind"] == "stage_end":
            out[(r["branch"], r["stage"])] = (
                load_point(run_dir / r["point"]),
                load_point(run_dir / r["buffers"]),
            )
    return out


def bn_config(tiny):
    cfg = copy.deepcopy(tiny)
    cfg["model"] = {"kind": "small_cnn", "channels": [4, 8], "hidden": 16, "batch_norm": True}
    fip = cfg["branches"]["fip"][0]
    cfg["branches"]["fip"] = [fip, dict(fip, name="third", task=0)]
    cfg["branches"]["der"] = [
        dict(cfg["branches"]["finetune"][0], objectives=["task_ce", "der", "replay_ce"])
    ]
    return cfg


@pytest.mark.parametrize("stop_after", [2, 5, 8])
def test_a_batchnorm_model_resumes_exactly(tiny, tmp_path, stop_after):
    cfg = bn_config(tiny)
    whole = tmp_path / "whole"
    fipframe.run(cfg, out=whole)
    cut = tmp_path / "cut"
    pm = make_plugin_manager(plugins=[Recorder(stop_after=stop_after)])
    with pytest.raises(KeyboardInterrupt):
        fipframe.run(load_config(cfg, pm=pm), out=cut)
    fipframe.resume(cut)
    a, b = all_ends(whole), all_ends(cut)
    assert set(a) == set(b) and len(a) == 5
    for key in a:
        for part in (0, 1):
            for name, t in a[key][part].items():
                assert torch.equal(t, b[key][part][name]), (key, name)


class SqrtBarrierPlugin(BarrierPlugin):
    """``sqrt(R - t)``: like the log barrier, but a jump past R makes the gradient, and so the
    weights, NaN: the next forwards in the chunk then write NaN into BatchNorm's statistics."""

    class Barrier(BarrierPlugin.Barrier):
        def loss(self, params, logits, batch):
            t = sum(((params[k] - self.start[k]) * self.u[k]).sum() for k in params)
            return torch.sqrt(1.0 - t)


def test_rollback_restores_batchnorm_statistics(tiny, tmp_path):
    cfg = copy.deepcopy(tiny)
    cfg["model"] = {"kind": "small_cnn", "channels": [4], "hidden": 8, "batch_norm": True}
    cfg["branches"] = {}
    cfg["stages"][0]["integrator"] = {
        "kind": "gradient",
        "lr": 0.2,
        "optimizer": {"name": "sgd", "momentum": 0.0},
    }
    cfg["stages"][0]["objectives"] = ["task_ce", "barrier"]
    cfg["run"]["max_rollbacks"] = 10
    pm = make_plugin_manager(plugins=[SqrtBarrierPlugin()])
    result = fipframe.run(load_config(cfg, pm=pm), out=tmp_path / "rb")
    assert result.records[-1]["metrics"]["step_scale"] < 1.0  # it did roll back
    (params, buffers) = all_ends(tmp_path / "rb")[("trunk", "first")]
    assert all(torch.isfinite(b.float()).all() for b in buffers.values())
    metrics = result.records[-1]["metrics"]
    assert math.isfinite(metrics["acc/test/task_0"]) and metrics["acc/test/task_0"] > 0.9


def test_export_and_load_into_give_the_network_the_run_measured(tiny, tmp_path):
    from fipframe.traversal.export import export

    cfg = bn_config(tiny)
    result = fipframe.run(cfg, out=tmp_path / "run")
    end = [r for r in result.records if r["branch"] == "der" and r["kind"] == "stage_end"][-1]
    report = export(tmp_path / "run", tmp_path / "e", branch="der")
    assert report["test_accuracy"] == pytest.approx(end["metrics"]["acc/test/average"], abs=1e-6)
