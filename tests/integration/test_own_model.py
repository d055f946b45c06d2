"""A user's own nn.Module and data through fipframe: run, resume, export, the trained network
back, named inputs, streamed data, and clear refusals of what does not fit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import fipframe
from fipframe.api import load_config
from fipframe.cli import main
from fipframe.core.adapter import ArchitectureAdapter
from fipframe.core.sparsity import sequential_groups
from fipframe.data.mnist import load_mnist
from fipframe.errors import ConfigError
from fipframe.plugins import make_plugin_manager
from fipframe.testing import TinyTextClassifier, token_tasks
from fipframe.traversal.export import export

from .test_traversal import Recorder, end_points


class Net(nn.Module):
    """A user's network, defined outside fipframe."""

    def __init__(self, hidden: int = 48, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="module")
def digits():
    """Two tasks of real MNIST as plain tensors: digits 0-4, then 5-9."""
    train, _, test = load_mnist()

    def part(split, lo, n):
        keep = (split.y >= lo) & (split.y < lo + 5)
        return split.x[keep][:n], split.y[keep][:n]

    return [(*part(train, lo, 800), *part(test, lo, 300)) for lo in (0, 5)]


def _stage(name, task, steps=100, **kw):
    return {
        "name": name,
        "task": task,
        "steps": steps,
        "batch_size": 32,
        "memory_batch": 32,
        "integrator": {"kind": "gradient", "lr": 3e-3},
        "objectives": ["task_ce"],
        **kw,
    }


CONFIG = {
    "name": "own",
    "memory": {"size": 100},
    "run": {"seed": 0, "chunk": 10, "progress": "off"},
    "stages": [_stage("first", 0)],
    "branches": {
        "finetune": [_stage("second", 1)],
        "fip": [
            _stage(
                "second",
                1,
                integrator={"kind": "penalty", "lr": 3e-3, "alpha": 10.0},
                metric="bhattacharyya",
            )
        ],
    },
}


def fresh(seed: int = 0, **kw) -> Net:
    torch.manual_seed(seed)
    return Net(**kw)


def test_own_module_and_tensors_run_and_come_back(digits, tmp_path):
    result = fipframe.run(CONFIG, model=fresh(), data=digits, out=tmp_path / "run")
    final = result.final
    assert final["fip"]["task_0"] > final["finetune"]["task_0"] + 0.3  # FIP keeps digits 0-4
    assert final["fip"]["task_1"] > 0.8 and final["finetune"]["task_1"] > 0.8
    origin = json.loads((tmp_path / "run" / "origin.json").read_text())
    assert origin["model"]["source"] == "python"
    assert origin["model"]["class"].endswith("test_own_model.Net")
    assert origin["model"]["params"]["body.1.weight"] == [48, 784]
    assert [t["sizes"] for t in origin["data"]["tasks"]] == [[800, 0, 300], [800, 0, 300]]
    # the trained network comes back as a module and computes what the run measured
    for branch in ("fip", "finetune"):
        net = result.load_into(fresh(5), branch)
        x, y = digits[0][2], digits[0][3]
        with torch.no_grad():
            acc = float((net(x).argmax(-1) == y).float().mean())
        assert acc == pytest.approx(final[branch]["task_0"], abs=1e-6)
    # from disk as well, and a trunk stage by name
    again = fipframe.RunResult.load(tmp_path / "run")
    a = again.load_into(fresh(5), "fip")
    b = result.load_into(fresh(6), "fip")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    trunk = result.load_into(fresh(5), "fip", stage="first")
    assert not torch.equal(trunk.body[1].weight, a.body[1].weight)
    with pytest.raises(ConfigError, match="does not have the run's tensors"):
        result.load_into(fresh(hidden=8), "fip")


def test_resume_and_export_ask_for_the_same_model_and_data(digits, tmp_path):
    out = tmp_path / "run"
    pm = make_plugin_manager(plugins=[Recorder(stop_after=4)])
    config = load_config(CONFIG, pm=pm)
    frozen = ArchitectureAdapter(fresh(), frozen=["*.3.bias"])
    with pytest.raises(KeyboardInterrupt):
        fipframe.build(config, model=frozen, data=digits, out=out).run()
    with pytest.raises(
        ConfigError, match=r"model was passed from Python .*Net.*resume needs the same architecture"
    ):
        fipframe.resume(out)
    with pytest.raises(ConfigError, match="data was passed from Python"):
        fipframe.resume(out, model=fresh())
    with pytest.raises(ConfigError, match=r"does not match the run's .*body.1.weight \[48, 784\]"):
        fipframe.resume(out, model=fresh(hidden=16), data=digits)
    other = copy.deepcopy(digits)
    other[1] = tuple(t[:400] for t in other[1])
    with pytest.raises(ConfigError, match="data: tasks differ from the run's"):
        fipframe.resume(out, model=fresh(), data=other)
    assert main(["run", "--resume", str(out)]) == 2  # the CLI cannot bring a Python model
    # the traversable weights come from the checkpoint, the frozen bias from the run
    fipframe.resume(out, model=ArchitectureAdapter(fresh(9), frozen=["*.3.bias"]), data=digits)
    whole = tmp_path / "whole"
    fipframe.run(
        CONFIG, model=ArchitectureAdapter(fresh(), frozen=["*.3.bias"]), data=digits, out=whole
    )
    got, want = end_points(out), end_points(whole)
    for branch in want:
        for name in want[branch]:
            assert torch.equal(got[branch][name], want[branch][name]), (branch, name)
    with pytest.raises(ConfigError, match="export needs the same architecture"):
        export(out, tmp_path / "e")
    report = export(
        out,
        tmp_path / "e",
        branch="fip",
        model=ArchitectureAdapter(fresh(4), frozen=["*.3.bias"]),
        data=digits,
    )
    assert report["params_total"] == sum(p.numel() for p in fresh().parameters())


def test_frozen_and_prune_groups_from_python(digits, tmp_path):
    cfg = copy.deepcopy(CONFIG)
    cfg["branches"] = {"prune": [_stage("prune", 1, prune={"sparsity": 0.5, "structured": True})]}
    net = fresh()
    head = net.body[3].weight.detach().clone()
    frozen = ArchitectureAdapter(net, frozen=["body.3.*"])
    result = fipframe.run(CONFIG, model=frozen, data=digits, out=tmp_path / "frozen")
    back = result.load_into(fresh(3), "fip")
    assert torch.equal(back.body[3].weight, head)  # frozen: never moved
    assert not torch.equal(back.body[1].weight, fresh().body[1].weight)
    # a fresh instance for export gets the run's frozen weights, not its own
    report = export(
        tmp_path / "frozen",
        tmp_path / "fe",
        branch="fip",
        model=ArchitectureAdapter(fresh(7), frozen=["body.3.*"]),
        data=digits,
    )
    assert report["test_accuracy"] == pytest.approx(sum(result.final["fip"].values()) / 2)
    grouped = ArchitectureAdapter(fresh(), prune_groups=sequential_groups)
    result = fipframe.run(cfg, model=grouped, data=digits, out=tmp_path / "grouped")
    back = result.load_into(fresh(3), "prune")
    kept = (back.body[1].weight != 0).any(1)  # whole hidden units pruned
    assert int(kept.sum()) == 24
    report = export(
        tmp_path / "grouped",
        tmp_path / "e",
        structured=True,
        model=ArchitectureAdapter(fresh(), prune_groups=sequential_groups),
        data=digits,
    )
    assert report["structured"]["units"]["body.1"] == {"before": 48, "after": 24}


def test_named_inputs_with_an_attention_mask(tmp_path):
    """A transformer fed input_ids + attention_mask runs every step rule the FIP branch uses,
    and its results change when the mask is dropped."""
    tasks = token_tasks(2, train=384, test=128, length=10, words=6)
    cfg = copy.deepcopy(CONFIG)
    cfg["run"]["measure_inputs"] = 64
    cfg["stages"] = [_stage("first", 0, 80, integrator={"kind": "gradient", "lr": 1e-2})]
    cfg["branches"]["fip"][0]["integrator"]["lr"] = 1e-2
    cfg["branches"]["natural"] = [
        _stage("second", 1, 20, integrator={"kind": "natural", "eps": 0.05}, metric="kl")
    ]
    results = {}
    for masked in (True, False):
        data = [
            tuple(
                x if not isinstance(x, dict) or masked else {"input_ids": x["input_ids"]}
                for x in task
            )
            for task in tasks
        ]
        torch.manual_seed(0)
        model = TinyTextClassifier(24, 4, dim=16, max_len=10)
        results[masked] = fipframe.run(cfg, model=model, data=data, out=tmp_path / str(masked))
    with_mask, without = results[True], results[False]
    start = with_mask.accuracies("trunk")
    assert start[0] > 0.85  # the task is learnable when the padding is masked
    assert without.accuracies("trunk")[0] < start[0] - 0.1  # and not when it is read
    recs = [r for r in with_mask.records if r["branch"] == "fip" and r["kind"] == "stage_end"]
    assert recs[0]["metrics"]["path/length"] > 0
    assert with_mask.final["fip"]["task_0"] > with_mask.final["finetune"]["task_0"]
    assert "natural" in with_mask.final


def test_keys_of_named_inputs_must_agree_between_tasks_and_splits():
    tasks = token_tasks(2, train=32, test=16)
    wrong = copy.deepcopy(tasks)
    wrong[1] = ({"input_ids": tasks[1][0]["input_ids"]}, *tasks[1][1:])
    with pytest.raises(ConfigError, match=r"task 1's inputs are \{input_ids: \[12\]\}, task 0's"):
        fipframe.build(CONFIG, model=TinyTextClassifier(32, 4), data=wrong)
    wrong = copy.deepcopy(tasks)
    wrong[0] = (*tasks[0][:2], {"input_ids": tasks[0][2]["input_ids"]}, tasks[0][3])
    with pytest.raises(ConfigError, match=r"task 0's test inputs are \{input_ids: \[12\]\}"):
        fipframe.build(CONFIG, model=TinyTextClassifier(32, 4), data=wrong)


def test_bad_models_and_data_are_refused_before_anything_is_written(digits, tmp_path):
    out = tmp_path / "never"
    cases = [
        (dict(model=fresh(classes=7), data=digits), r"returned shape \[2, 7\].*\[batch, 10\]"),
        (dict(model=nn.Linear(3, 10), data=digits), r"Linear failed on a batch of task 0's input"),
        (
            dict(model=fresh(), data=[digits[0][:2] + (digits[0][2], digits[0][3] + 5)]),
            r"task 0 \(task_0\) test has labels \[5, 6, 7, 8, 9\] that are not among its class",
        ),
        (
            dict(model=fresh(), data=[(digits[0][0], digits[0][1].float(), *digits[0][2:])]),
            r"data\[0\].y_train: labels must be a 1-d integer tensor",
        ),
        (
            dict(model=fresh(), data=[(digits[0][0][:5], *digits[0][1:])]),
            r"x_train holds 5 examples but y_train 800 labels",
        ),
        (dict(model=fresh(), data="mnist"), r"data: expected a TaskSequence or a non-empty list"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            fipframe.run(CONFIG, out=out, **kwargs)
        assert not out.exists()
    beyond = copy.deepcopy(CONFIG)
    beyond["branches"]["fip"][0]["task"] = 2
    with pytest.raises(ConfigError, match=r"branches.fip\[0\].task: 2 is out of range; the data"):
        fipframe.run(beyond, model=fresh(), data=digits, out=out)
    with pytest.raises(ConfigError, match=r"model: no model kind in the config and no model="):
        fipframe.run(CONFIG, data=digits, out=out)
    with pytest.raises(ConfigError, match=r"data: no data kind in the config and no data="):
        fipframe.run(CONFIG, model=fresh(), out=out)
    assert not out.exists()


BAD_PLUGIN = """
from typing import Literal
import torch
import fipframe
from fipframe.core import PluginConfig
from fipframe.data.task import Split, Task, TaskSequence

class BadConfig(PluginConfig):
    kind: Literal["{kind}"] = "{kind}"

def build(cfg, *, seed):
    x = torch.randn(40, 1, 28, 28)
    y = torch.arange(40) % 2
    wrong = {wrong}
    train, test = Split(x, y), Split(x, wrong)
    task = Task("t0", (0, 1), train, train.subset(y[:0]), test)
    return TaskSequence("bad", [task], (1, 28, 28), 10)

@fipframe.hookimpl
def fipframe_register_datasets():
    return [fipframe.Spec("{kind}", BadConfig, build, "test data with a fault")]
"""


def test_a_dataset_plugin_with_bad_labels_exits_2_from_the_cli(tiny, tmp_path, monkeypatch, capsys):
    """The checks cover registered kinds too: a plugin's tasks get them through the CLI."""
    import yaml

    from tests.conftest import make_distribution

    source = BAD_PLUGIN.replace("{kind}", "bad_labels").replace("{wrong}", "y + 4")
    make_distribution(tmp_path, "badlabels", "badlabels_mod", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny["data"] = {"kind": "bad_labels"}
    del tiny["branches"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: data: task 0 (t0) test has labels [4, 5] that are not among its classes" in err
    assert not out.exists()


def test_a_stage_moves_only_what_it_names_and_resumes_exactly(digits, tmp_path):
    """``moves``/``holds``: held parameters stay bit-equal, the rest learn, SI and Adam state see
    only the moving part, and an interrupted run resumes to the same end points."""
    cfg = copy.deepcopy(CONFIG)
    cfg["branches"] = {
        "head": [_stage("second", 1, moves=["body.3.*"])],
        "body": [
            _stage(
                "second",
                1,
                holds=["body.3.*"],
                objectives=["task_ce", {"kind": "si", "weight": 1.0}],
            )
        ],
    }
    result = fipframe.run(cfg, model=fresh(), data=digits, out=tmp_path / "run")
    ends = end_points(tmp_path / "run")
    first = result.load_into(fresh(3), "head", stage="first").state_dict()
    for name, value in ends["head"].items():
        same = torch.equal(value, first[name])
        assert same == (not name.startswith("body.3.")), name
    for name, value in ends["body"].items():
        assert torch.equal(value, first[name]) == name.startswith("body.3."), name
    assert result.final["head"]["task_1"] > 0.6  # the head alone learns the new digits
    # interrupted mid-stage and resumed: the same end points
    pm = make_plugin_manager(plugins=[Recorder(stop_after=6)])
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        fipframe.build(load_config(cfg, pm=pm), model=fresh(), data=digits, out=out).run()
    fipframe.resume(out, model=fresh(), data=digits)
    again = end_points(out)
    for branch in ends:
        for name in ends[branch]:
            assert torch.equal(again[branch][name], ends[branch][name]), (branch, name)
    bad = copy.deepcopy(cfg)
    bad["branches"]["head"][0]["moves"] = ["nothing.*"]
    with pytest.raises(ConfigError, match=r"stage second: moves \['nothing.\*'\] match no"):
        fipframe.run(bad, model=fresh(), data=digits, out=tmp_path / "bad")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()  # refused before the trunk ran
    bad["branches"]["head"][0]["moves"] = ["body.3.*"]
    bad["branches"]["head"][0]["holds"] = ["body.3.bias", "bdy.*"]  # a typo is not silent
    with pytest.raises(ConfigError, match=r"stage second: holds \['bdy.\*'\] match no"):
        fipframe.run(bad, model=fresh(), data=digits, out=tmp_path / "bad2")
