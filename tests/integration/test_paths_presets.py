"""The CIFAR-10 VGG16 presets for paths and ensembles, end to end on generated CIFAR-10 files in
torchvision's format (tiny sizes; the presets' structure and every reference between them)."""

from __future__ import annotations

import pytest
import torch
import yaml

import fipframe
from fipframe.api import preset_path
from fipframe.configfile import expand_templates
from fipframe.data.vision import CIFAR_MEAN, CIFAR_STD
from fipframe.eval import ensemble as E
from fipframe.eval import paths as P
from fipframe.eval.points import path_points, read_point
from tests.unit.test_vision_data import make_cifar


def shrunk(name: str, root, **run) -> dict:
    """The preset with its stages cut to 2 steps of 8 on the generated files."""
    cfg = expand_templates(yaml.safe_load(preset_path(name).read_text()))  # stages written out
    cfg["data"].update(root=str(root), download=False)
    cfg["memory"]["size"] = 16
    cfg["run"].update(chunk=1, progress="off", eval_batch_size=64, bn_batches=2, **run)
    if cfg["run"].get("save_every"):
        cfg["run"]["save_every"] = 1
    for _, stages in [("trunk", cfg["stages"]), *cfg.get("branches", {}).items()]:
        for s in stages:
            s.update(steps=2, batch_size=8)
            if "memory_batch" in s:
                s["memory_batch"] = 8
    return cfg


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    make_cifar(root, 10, per_batch=8, n_test=16)
    return root


def test_two_vgg16s_and_a_fip_between_them(cifar, tmp_path):
    for end, seed in (("a", 0), ("b", 1)):
        cfg = shrunk("cifar10-vgg16", cifar, seed=seed)
        assert cfg["model"] == {"kind": "vgg16", "batch_norm": True}
        fipframe.run(cfg, out=tmp_path / end)
    cfg = shrunk("connect-cifar10-vgg16", cifar)
    assert cfg["run"]["init"] == "runs/cifar10-vgg16-a"  # the preset's own recipe
    assert cfg["stages"][0]["objectives"][1]["target"] == "runs/cifar10-vgg16-b"
    cfg["run"]["init"] = str(tmp_path / "a")
    cfg["stages"][0]["objectives"][1]["target"] = str(tmp_path / "b")
    result = fipframe.run(cfg, out=tmp_path / "path")
    assert "loss/divergence" in result.records[0]["metrics"]  # the stored images are kept
    points = path_points(tmp_path / "path", "trunk")
    assert [p.meta["step"] for p in points] == [1, 2]
    a, b = read_point(tmp_path / "a"), read_point(tmp_path / "b")
    tr = fipframe.build(cfg)
    rows = P.evaluate_path(
        tr.evaluator, P.through([a.params, *[p.params for p in points], b.params]), 3
    )
    assert len(rows) == 3 and all(0 <= r["acc"] <= 1 for r in rows)


def test_the_ensemble_preset_gives_fip_members_and_fge_snapshots(cifar, tmp_path):
    cfg = shrunk("ensemble-cifar10-vgg16", cifar)
    assert len(cfg["branches"]["fip"]) == 10 and len(cfg["branches"]["fge"]) == 19
    cfg["branches"] = {"fip": cfg["branches"]["fip"][:2], "fge": cfg["branches"]["fge"][:3]}
    fipframe.run(cfg, out=tmp_path / "ens")
    fip = E.members(tmp_path / "ens", "fip")
    fge = E.members(tmp_path / "ens", "fge", stages="down*")
    assert [m.meta["stage"] for m in fip] == ["m0", "m1"]
    assert [m.meta["stage"] for m in fge] == ["down0", "down1"]
    tr = fipframe.build(cfg)
    x = tr.tasks.tasks[0].test.x[:4]
    ens = E.Ensemble(tr.adapter.model, fip + fge)
    assert torch.allclose(ens.member_logits(x), ens.loop_logits(x), atol=1e-4)
    # the data's own normalisation brings the images back to [0, 1] for the attacks
    pixels = x * torch.tensor(CIFAR_STD[10]).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN[10]).view(
        1, 3, 1, 1
    )
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4
