"""Sparsification on real MNIST: FIP's soft target, hard pruning, rewinding, resume, export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import fipframe
from fipframe.api import load_config, run
from fipframe.core.sparsity import MASK_PREFIX, counted
from fipframe.errors import ConfigError, TraversalError
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.artifact import load_point
from fipframe.traversal.export import export, load_structured

from .test_traversal import Recorder

S = 0.9


def _train(name, steps, **kw):
    return {
        "name": name,
        "task": 0,
        "steps": steps,
        "batch_size": 64,
        "integrator": {"kind": "gradient", "lr": 3e-3},
        "objectives": ["task_ce"],
        **kw,
    }


def _prune(name, sparsity, **kw):
    return {
        "name": name,
        "steps": 0,
        "integrator": "gradient",
        "prune": {"sparsity": sparsity, "every": None, **kw},
    }


def sparse_config(model=None, **prune):
    return {
        "name": "sparse",
        "model": model or {"kind": "mlp", "hidden": [64, 32]},
        "data": {
            "kind": "split_mnist",
            "tasks": [list(range(10))],
            "train_limit": 3000,
            "eval_limit": 500,
        },
        "memory": {"size": 500},
        "run": {"seed": 0, "chunk": 20, "progress": "off"},
        "stages": [_train("warmup", 20), _train("dense", 120)],
        "branches": {
            "oneshot": [_prune("prune", S, **prune)],
            "oneshot-ft": [_prune("prune", S, **prune), _train("finetune", 60)],
            "gmp": [
                _train(
                    "gradual",
                    60,
                    prune={"sparsity": S, "schedule": "cubic", "ramp": 0.5, "every": 10, **prune},
                )
            ],
            "imp": [
                _prune("prune-1", 0.6, **prune),
                _train("train-1", 30, start_from="warmup"),
                _prune("prune-2", S, **prune),
                _train("train-2", 30, start_from="warmup"),
            ],
            "fip": [
                {
                    **_train("sparsify", 40, memory_batch=64),
                    "integrator": {"kind": "penalty", "lr": 3e-3, "alpha": 1.0},
                    "metric": "kl",
                    "objectives": [
                        {
                            "kind": "prune_target",
                            "sparsity": S,
                            "schedule": "cubic",
                            "ramp": 0.6,
                            "every": 10,
                            "weight": 30.0,
                            **prune,
                        },
                        "task_ce",
                    ],
                    "prune": {"sparsity": S, "every": None, **prune},
                },
                _train("finetune", 20),
            ],
        },
    }


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ends(run_dir):
    return {(r["branch"], r["stage"]): r for r in _records(run_dir) if r["kind"] == "stage_end"}


def test_every_method_reaches_its_sparsity_and_keeps_it(tmp_path):
    out = tmp_path / "run"
    result = run(sparse_config(), out=out)
    ends = _ends(out)
    dense = load_point(out / ends[("trunk", "dense")]["point"])
    names = [n for n, v in dense.items() if v.dim() >= 2]  # the counted weights by default
    n_counted = sum(dense[n].numel() for n in names)
    for branch in ("oneshot", "oneshot-ft", "gmp", "imp", "fip"):
        last = [r for (b, _), r in ends.items() if b == branch][-1]
        point = load_point(out / last["point"])
        zeros = sum(int((point[n] == 0).sum()) for n in names)
        assert zeros >= int(S * n_counted), branch  # the mask holds through fine-tuning
        assert zeros <= int(S * n_counted) + 5, branch  # and prunes no more than asked
        assert all(bool((point[n] != 0).all()) for n in point if n not in names)  # biases
        assert last["metrics"]["sparsity"] == pytest.approx(S, abs=1e-3)
        carry = load_point(out / last["carry"])
        assert sorted(k[len(MASK_PREFIX) :] for k in carry) == sorted(names)
    # one-shot pruning of the dense net is exactly its magnitude projection
    oneshot = load_point(out / ends[("oneshot", "prune")]["point"])
    flat = torch.cat([dense[n].abs().flatten() for n in names])
    threshold = flat.kthvalue(int(S * n_counted)).values
    for n in names:
        assert torch.equal(oneshot[n], dense[n] * (dense[n].abs() > threshold))
    # IMP rewinds: the second round starts from the warm-up point under the round's mask
    warm = load_point(out / ends[("trunk", "warmup")]["point"])
    start = next(
        r for r in _records(out) if r["branch"] == "imp" and r["stage"] == "train-2"
    )  # its first chunk; the saved start point is the rewound one
    start_point = load_point(out / "points" / "imp-03-train-2-start.safetensors")
    mask = load_point(out / ends[("imp", "prune-2")]["carry"])
    for n in names:
        assert torch.equal(start_point[n], warm[n] * mask[MASK_PREFIX + n])
    assert start["step"] > 0
    acc = {b: next(iter(a.values())) for b, a in result.final.items()}
    # fine-tuning recovers what one-shot pruning loses; the FIP path ends above one-shot too
    assert acc["oneshot-ft"] > acc["oneshot"] + 0.05
    assert acc["fip"] > acc["oneshot"] + 0.05


def test_fip_path_makes_the_network_prunable_while_it_stays_dense(tmp_path):
    cfg = sparse_config()
    cfg["run"]["chunk"] = 5
    cfg["branches"] = {k: cfg["branches"][k] for k in ("oneshot", "fip")}
    out = tmp_path / "run"
    run(cfg, out=out)
    recs = [r for r in _records(out) if r["branch"] == "fip" and r["stage"] == "sparsify"]
    chunks = [r["metrics"] for r in recs if r["kind"] == "chunk"]
    targets = [m["sparsity/target"] for m in chunks]
    assert len(chunks) == 7 and targets == sorted(targets) and targets[0] < targets[-1] == S
    # along the path the weights stay dense (the target is soft) ...
    assert all(m["sparsity"] < 0.05 for m in chunks)
    # ... while the accuracy of their projection onto the target mask rises above what
    # projecting the dense network gives (one-shot pruning at the same sparsity)
    ends = _ends(out)
    oneshot = ends[("oneshot", "prune")]["metrics"]["acc/test/average"]
    assert chunks[-1]["projected/acc/test/average"] > oneshot + 0.05
    assert ends[("fip", "sparsify")]["metrics"]["acc/test/average"] > oneshot + 0.05
    # the pull is toward zero: the distance to the pruned copy falls once the target is fixed
    dist = [m["loss/prune_target"] for m in chunks if m["sparsity/target"] == S]
    assert dist[-1] < dist[0]


def test_interrupted_gradual_pruning_resumes_bit_exactly(tmp_path):
    cfg = sparse_config()
    cfg["branches"] = {k: cfg["branches"][k] for k in ("gmp", "fip")}
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(load_config(cfg), out=full)
    # stop inside the gradual stage (trunk has 7 chunks), then inside the FIP stage
    for stop in (9, 13):
        with pytest.raises(KeyboardInterrupt):
            run(
                load_config(cfg, pm=make_plugin_manager(plugins=[Recorder(stop_after=stop)])),
                out=cut,
            )
        fipframe.resume(cut)
        a, b = _ends(full), _ends(cut)
        for key in (("gmp", "gradual"), ("fip", "finetune")):
            pa, pb = load_point(full / a[key]["point"]), load_point(cut / b[key]["point"])
            assert all(torch.equal(pa[n], pb[n]) for n in pa), (stop, key)
        for path in cut.iterdir():
            if path.is_dir():
                for f in path.iterdir():
                    f.unlink()
                path.rmdir()
            else:
                path.unlink()
        cut.rmdir()


def test_structured_pruning_of_a_cnn_with_batchnorm_exports_a_smaller_equal_network(tmp_path):
    model = {"kind": "small_cnn", "channels": [8, 16], "hidden": 32, "batch_norm": True}
    cfg = sparse_config(model, structured=True, scope="layer")
    cfg["branches"] = {k: cfg["branches"][k] for k in ("oneshot-ft", "fip")}
    cfg["stages"] = [_train("warmup", 10), _train("dense", 40)]
    for stages in cfg["branches"].values():
        for st in stages:
            if st["steps"]:
                st["steps"] = 20
    out = tmp_path / "run"
    run(cfg, out=out)
    report = export(out, tmp_path / "export", branch="fip", structured=True)
    per = report["structured"]["units"]
    assert per == {
        "0": {"before": 8, "after": 1},
        "4": {"before": 16, "after": 2},
        "9": {"before": 32, "after": 4},
    }
    assert report["structured"]["params_total"] < report["params_total"] / 10
    assert report["structured"]["max_output_difference"] < 1e-4
    # counts are real: the dense file holds zeros, the structured one is small
    state = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert (
        sum(
            int((v != 0).sum())
            for k, v in state.items()
            if "running" not in k and "num_batches" not in k
        )
        == report["params_nonzero"]
    )
    small = load_structured(
        load_config(out / "config.yaml"), tmp_path / "export" / "model-structured.safetensors"
    )
    assert sum(p.numel() for p in small.parameters()) == report["structured"]["params_total"]
    x = torch.randn(5, 1, 28, 28)
    dense = fipframe.build(load_config(out / "config.yaml")).adapter.model
    dense.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(small(x), dense.eval()(x), atol=1e-4)
    assert report["test_accuracy"] > 0.3


def test_sparsity_config_errors_name_the_field(tmp_path):
    cfg = sparse_config()
    cfg["branches"]["imp"][1]["start_from"] = "nowhere"
    cfg["branches"]["oneshot"][0].pop("prune")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert "branches.oneshot[0]" in text and "steps: 0 is allowed only" in text
    cfg = sparse_config()
    cfg["branches"]["imp"][1]["start_from"] = "nowhere"
    with pytest.raises(
        ConfigError, match=r"branches.imp\[1\].start_from: 'nowhere' is not a stage"
    ):
        load_config(cfg)
    cfg = sparse_config()
    cfg["branches"]["fip"][0]["objectives"][0]["include"] = ["nothing.*"]
    with pytest.raises(TraversalError, match="no traversable tensor counts"):
        run(cfg)


def test_structured_pruning_needs_prune_groups(tmp_path):
    cfg = sparse_config(structured=True)
    cfg["branches"] = {"oneshot": cfg["branches"]["oneshot"]}
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(TraversalError, match="declares no prune groups"):
        fipframe.run(cfg, model=net)
    assert counted(dict(net.named_parameters()), load_config(cfg).branches["oneshot"][0].prune) == [
        "1.weight"
    ]
