"""Ensembles on real MNIST: members sampled along a FIP with the diversity objective, FGE as
stages of a cyclical learning rate, one vmapped forward for all members, and torchattacks'
FGSM/PGD in pixel space (transfer and adaptive)."""

from __future__ import annotations

import pytest
import torch

import fipframe
from fipframe.data.mnist import MEAN, STD
from fipframe.errors import ConfigError
from fipframe.eval import ensemble as E
from fipframe.eval.points import read_point

K = 3


def sgd(start: float, end: float) -> dict:
    return {"kind": "gradient", "lr": {"start": start, "end": end}, "optimizer": {"name": "sgd"}}


def ensemble_config(weight: float = 1.0, bn: bool = False) -> dict:
    member = {
        "task": 0,
        "steps": 40,
        "batch_size": 64,
        "memory_batch": 64,
        "integrator": {"kind": "penalty", "lr": 1e-3, "alpha": 1.0},
        "metric": "kl",
    }
    fge = []
    for k in range(K):
        fge += [
            {"name": f"down{k}", "task": 0, "steps": 20, "integrator": sgd(0.05, 0.001)},
            {"name": f"up{k}", "task": 0, "steps": 20, "integrator": sgd(0.001, 0.05)},
        ]
    for s in fge:
        s["objectives"] = ["task_ce"]
    return {
        "model": {"kind": "small_cnn", "channels": [4, 8], "hidden": 16, "batch_norm": bn},
        "data": {
            "kind": "split_mnist",
            "tasks": [list(range(10))],
            "train_limit": 1500,
            "eval_limit": 300,
        },
        "memory": {"size": 128},
        "run": {"seed": 0, "chunk": 20, "progress": "off"},
        "stages": [
            {
                "name": "train",
                "task": 0,
                "steps": 150,
                "batch_size": 64,
                "integrator": {"kind": "gradient", "lr": 3e-3},
                "objectives": ["task_ce"],
            }
        ],
        "branches": {
            "diverse": [
                dict(
                    member,
                    name=f"m{k}",
                    objectives=["task_ce", {"kind": "diversity", "weight": weight}],
                )
                for k in range(K)
            ],
            "plain": [dict(member, name=f"m{k}", objectives=["task_ce"]) for k in range(K)],
            "outputs": [
                dict(
                    member,
                    name=f"m{k}",
                    objectives=[
                        "task_ce",
                        {"kind": "diversity", "space": "outputs", "weight": 1.0, "pool": 256},
                    ],
                )
                for k in range(K)
            ],
            "unlabelled": [
                dict(
                    member,
                    name=f"m{k}",
                    objectives=[
                        "task_ce",
                        {
                            "kind": "diversity",
                            "space": "outputs",
                            "exclude": "prediction",
                            "weight": 1.0,
                            "pool": 256,
                        },
                    ],
                )
                for k in range(K)
            ],
            "fge": fge[:-1],
        },
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens") / "run"
    fipframe.run(ensemble_config(), out=root)
    return root


def spread(members):
    flat = [torch.cat([v.reshape(-1) for v in m.params.values()]) for m in members]
    return min(float((a - b).norm()) for i, a in enumerate(flat) for b in flat[i + 1 :])


def test_diversity_spreads_the_members_while_the_fip_keeps_their_function(run):
    diverse = E.members(run, "diverse")
    plain = E.members(run, "plain")
    assert [m.meta["stage"] for m in diverse] == ["m0", "m1", "m2"]
    assert spread(diverse) > 1.5 * spread(plain)
    tr = fipframe.build(ensemble_config())
    test = tr.tasks.tasks[0].test
    start = read_point(f"{run}#trunk").params
    start_acc = tr.evaluate(start)["acc/test/task_0"]
    d = E.diversity(E.Ensemble(tr.adapter.model, diverse), test.x, test.y)
    assert min(d["member_acc"]) > start_acc - 0.05
    assert d["distance_matrix"][0][0] == 0 and d["distance_matrix"][0][1] > 0
    assert 0 < d["disagreement"] < 0.2


def non_label_similarity(ensemble, x, y):
    """Mean pairwise cosine of the members' renormalised non-label probabilities."""
    p = torch.softmax(ensemble.member_logits(x), -1).scatter(
        -1, y.view(1, -1, 1).expand(ensemble.k, -1, 1), 0.0
    )
    q = torch.nn.functional.normalize(p, dim=-1)
    sims = [(q[i] * q[j]).sum(-1).mean() for i in range(ensemble.k) for j in range(i)]
    return float(torch.stack(sims).mean())


def test_output_diversity_makes_the_members_wrong_answers_differ(run):
    tr = fipframe.build(ensemble_config())
    test = tr.tasks.tasks[0].test
    model = tr.adapter.model
    start = read_point(f"{run}#trunk")
    outputs = E.members(run, "outputs")
    plain = E.members(run, "plain")
    sim_out = non_label_similarity(E.Ensemble(model, [start, *outputs]), test.x, test.y)
    sim_plain = non_label_similarity(E.Ensemble(model, [start, *plain]), test.x, test.y)
    assert sim_out < sim_plain - 0.05, (sim_out, sim_plain)
    unlabelled = E.members(run, "unlabelled")  # the start's predictions instead of labels
    sim_u = non_label_similarity(E.Ensemble(model, [start, *unlabelled]), test.x, test.y)
    assert sim_u < sim_plain - 0.05, (sim_u, sim_plain)
    accs = E.diversity(E.Ensemble(model, outputs), test.x, test.y)["member_acc"]
    assert min(accs) > tr.evaluate(start.params)["acc/test/task_0"] - 0.05


def test_fge_members_are_the_low_points_of_the_learning_rate_cycles(run):
    fge = E.members(run, "fge", stages="down*")
    assert [m.meta["stage"] for m in fge] == ["down0", "down1", "down2"]
    two = E.members(run, "fge", 2, stages="down*")
    assert [m.meta["stage"] for m in two] == ["down0", "down2"]  # evenly spaced, the last kept
    with pytest.raises(ConfigError, match="4 members asked of branch 'fge', which saved 3"):
        E.members(run, "fge", 4, stages="down*")


@pytest.mark.parametrize("bn", [False, True])
def test_one_vmapped_forward_gives_every_members_logits(run, bn, tmp_path):
    if bn:
        cfg = ensemble_config(bn=True)
        cfg["stages"][0]["steps"] = 40
        cfg["branches"] = {"plain": [dict(cfg["branches"]["plain"][0], steps=40)]}
        cfg["run"]["save_every"] = 20  # a point between the stage's ends: with its statistics
        fipframe.run(cfg, out=tmp_path / "bn")
        members = [read_point(f"{tmp_path / 'bn'}#trunk"), *E.members(tmp_path / "bn", "plain")]
        assert [m.meta["step"] for m in members[1:]] == [20, 40]
        assert all(m.buffers for m in members)
        mid = members[1].buffers
        assert not torch.equal(mid["1.running_mean"], members[2].buffers["1.running_mean"])
    else:
        cfg, members = ensemble_config(), E.members(run, "diverse")
    tr = fipframe.build(cfg)
    ens = E.Ensemble(tr.adapter.model, members)
    x = tr.tasks.tasks[0].test.x[:50]
    stacked = ens.member_logits(x)
    assert stacked.shape == (len(members), 50, 10)
    assert torch.allclose(stacked, ens.loop_logits(x), atol=1e-5)
    probs = torch.softmax(stacked, -1).mean(0)
    assert torch.allclose(ens(x).exp(), probs, atol=1e-6)


def test_attacks_stay_in_the_budget_and_the_adaptive_one_is_stronger(run):
    pytest.importorskip("torchattacks")
    tr = fipframe.build(ensemble_config())
    test = tr.tasks.tasks[0].test
    x, y = test.x[:200], test.y[:200]
    net = tr.adapter.model
    fipframe.eval.RunResult.load(run).load_into(net, "trunk")
    ens = E.Ensemble(net, E.members(run, "diverse"))
    clean = E.accuracy(ens(x), y)
    pgd = E.AttackConfig(kind="pgd", eps=0.15, steps=10)
    transfer = E.attack(net, x, y, pgd, mean=MEAN, std=STD)
    adaptive = E.attack(ens, x, y, pgd, mean=MEAN, std=STD)
    fgsm = E.attack(net, x, y, E.AttackConfig(kind="fgsm", eps=0.15), mean=MEAN, std=STD)
    for adv in (transfer, adaptive, fgsm):
        moved = ((adv - x) * STD).abs().max()  # in pixel units
        assert 0.1 < moved <= 0.15 + 1e-5
        pixels = adv * STD + MEAN
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    on_net = E.accuracy(net(transfer), y)
    assert on_net < clean - 0.3  # white-box on the network it was crafted on
    assert E.accuracy(ens(adaptive), y) <= E.accuracy(ens(transfer), y)
    assert E.accuracy(net(fgsm), y) < clean


def test_bad_attacks_are_refused(run):
    with pytest.raises(ValueError, match="beyond the data's range"):
        E.AttackConfig(eps=2.0)
    pytest.importorskip("torchattacks")
    tr = fipframe.build(ensemble_config())
    x, y = tr.tasks.tasks[0].test.x[:10], tr.tasks.tasks[0].test.y[:10]
    with pytest.raises(ConfigError, match=r"not about \[0, 1\]; give the data's own mean"):
        E.attack(tr.adapter.model, x, y, E.AttackConfig(eps=0.1), mean=0.0, std=1.0)
    # a std ten times too small maps the data inside [0, 1] but not onto it: refused too
    with pytest.raises(ConfigError, match=r"span \[0\.1.*not about \[0, 1\]"):
        E.attack(tr.adapter.model, x, y, E.AttackConfig(eps=0.1), mean=MEAN, std=STD / 10)
    with pytest.raises(ConfigError, match="3 per-channel means for inputs of shape"):
        E.attack(tr.adapter.model, x, y, E.AttackConfig(eps=0.1), mean=[0.1] * 3, std=STD)
