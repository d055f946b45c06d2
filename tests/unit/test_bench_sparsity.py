"""bench/sparsity.py: each arch's recipe reaches every method's stages, and the results page
keeps only runs made under the present recipe, merged from separate processes."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import sys
from pathlib import Path

import pytest

from fipframe import load_config
from fipframe.core import value_at

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def sp():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("sparsity")
    finally:
        sys.path.remove(str(BENCH))


def _training_stages(cfg):
    for name, stages in cfg.branches.items():
        for st in stages:
            if st.steps:
                yield name, st


@pytest.mark.parametrize("arch", ["lenet300", "resnet18"])
def test_every_method_trains_with_the_arch_recipe(sp, arch):
    cfg = load_config(sp.config(arch, 0))
    rec = sp.arch_recipe(arch)
    want = rec["optimizer"]["name"] if rec["optimizer"] else "adam"
    seen = set()
    for name, st in _training_stages(cfg):
        method, choice = name.split("_")[0], int(name.rsplit("_c", 1)[1])
        seen.add(method)
        assert st.integrator.optimizer.name == want, (name, st.name)
        factor = sp.TUNE[method][choice].get("lr", 1.0)
        assert value_at(st.integrator.lr, 0.5) == pytest.approx(factor * rec["lr"]), name
        if method == "fip" and st.name == "sparsify":
            assert st.integrator.alpha == sp.TUNE["fip"][choice]["alpha"]
    assert seen == {"oneshot-ft", "gmp", "imp", "fip"}
    # every tuned method tries the same number of settings, on every sparsity
    for m in ("oneshot-ft", "gmp", "imp", "fip"):
        names = [n for n in cfg.branches if n.startswith(f"{m}_0.9_")]
        assert len(names) == sp.TUNE_BUDGET, (m, names)
    pull = cfg.branches["fip_0.9_c0"][0].objectives[0]
    assert (pull.distance, pull.weight) == (rec["pull"]["distance"], rec["pull"]["weight"])
    dense = cfg.stages[1].integrator.lr
    ends = (value_at(dense, 0.0), value_at(dense, 1.0))
    if sp.ARCHS[arch]["trunk"] == "cosine":
        assert ends == pytest.approx((sp.ARCHS[arch]["lr"], 0.0))
        assert value_at(dense, 0.5) == pytest.approx(sp.ARCHS[arch]["lr"] / 2)
    else:
        assert ends == pytest.approx((sp.ARCHS[arch]["lr"],) * 2)
    # the same examples after the trunk for every method (FIP: half labelled, half stored),
    # but IMP, whose every round trains for the whole budget
    raw = sp.config(arch, 0)["branches"]
    budget = sp.ARCHS[arch]["budget"] * sp.BATCH
    budgets = {sp.examples(stages) for name, stages in raw.items() if not name.startswith("imp")}
    assert budgets == {0, budget}
    imp = {sp.examples(stages) for name, stages in raw.items() if name.startswith("imp")}
    assert imp == {sp.IMP_ROUNDS * budget}
    # a later seed runs only the chosen settings
    chosen = {f"{m}_{s:g}": 1 for m in sp.METHODS for s in sp.ARCHS[arch]["sparsities"]}
    chosen.update({f"oneshot_{s:g}": 0 for s in sp.ARCHS[arch]["sparsities"]})
    later = sp.config(arch, 1, chosen)["branches"]
    assert len(later) == len(sp.METHODS) * len(sp.ARCHS[arch]["sparsities"])
    assert all(n.endswith("_c1") or n.startswith("oneshot_") for n in later)


def test_choices_take_the_best_validation_setting_and_the_rule_is_stated(sp):
    tuning = {}
    for s in sp.ARCHS["lenet300"]["sparsities"]:
        for m in sp.METHODS:
            for c in range(len(sp.TUNE[m])):
                tuning[sp.branch_name(m, s, c)] = {"val": 0.5 + 0.1 * ((c + 1) % 3)}
    chosen = sp.choices(tuning, "lenet300")
    assert chosen["gmp_0.9"] == 1 and chosen["oneshot_0.9"] == 0
    assert sp.outcome([98.0, 98.2, 98.1], [97.0, 97.1, 97.2]) == "lead"
    assert sp.outcome([98.0, 98.2, 98.1], [98.1, 98.0, 98.3]) == "tie"
    assert sp.outcome([96.0, 96.2, 96.1], [97.0, 97.1, 97.2]) == "loss"


def _save(raw_path: str, key: str) -> None:
    sys.path.insert(0, str(BENCH))
    mod = importlib.import_module("sparsity")
    mod.RAW = Path(raw_path)
    for i in range(20):
        mod.save(f"{key}/{i}", {"i": i})


def test_runs_from_separate_processes_merge_and_stale_recipes_stay_out(sp, tmp_path, capsys):
    raw_path = tmp_path / "sparsity.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_save, args=(str(raw_path), k)) for k in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    raw = json.loads(raw_path.read_text())
    assert sorted(raw) == sorted(f"{k}/{i}" for k in "ab" for i in range(20))

    runs = {
        "resnet18/0": {"recipe": sp.signature("resnet18")},
        "resnet18/1": {},  # stored before recipes were recorded: Adam, constant trunk
        "lenet300/0": {"recipe": sp.signature("lenet300")},
        "lenet300/1": {"recipe": sp.LEGACY},  # the first protocol: no tuning, IMP starved
    }
    assert sp.current(runs, "resnet18") == [runs["resnet18/0"]]
    assert "resnet18/1" in capsys.readouterr().err
    assert sp.current(runs, "lenet300") == [runs["lenet300/0"]]
    assert "lenet300/1" in capsys.readouterr().err


def test_probe_eps_variants_use_the_papers_step_at_equal_examples(sp):
    probe = importlib.import_module("sparsity_probe")  # bench/ is on sys.path through `sp`
    raw = probe.config("lenet300", 0, 0.98, 0.01, ["gmp", "fip", "fip_eps0.5", "fip_eps2"])
    cfg = load_config(raw)
    assert set(cfg.branches) == {"gmp_0.98", "fip_0.98", "fip_eps0.5", "fip_eps2"}
    for name, eps in (("fip_eps0.5", 0.5), ("fip_eps2", 2.0)):
        path, finetune = cfg.branches[name]
        assert path.integrator.kind == "eps_step"
        assert value_at(path.integrator.eps, 0.3) == pytest.approx(eps)
        # everything but the step rule is the FIP branch of the arch's recipe
        assert path.objectives == cfg.branches["fip_0.98"][0].objectives
        assert finetune == cfg.branches["fip_0.98"][1]
    assert {sp.examples(st) for st in raw["branches"].values()} == {
        sp.ARCHS["lenet300"]["budget"] * sp.BATCH
    }
    with pytest.raises(SystemExit, match="fip_eps<length> takes a number.*fip_epsx"):
        probe.config("lenet300", 0, 0.98, 0.01, ["fip_epsx"])


def test_probe_invariance_variants_change_only_what_they_name(sp):
    probe = importlib.import_module("sparsity_probe")
    names = ["gmp", "fip", "fip_alpha0", "fip_mem32", "fip_hard"]
    raw = probe.config("lenet300", 0, 0.98, 0.01, names)
    cfg = load_config(raw)
    fip, gmp = cfg.branches["fip_0.98"], cfg.branches["gmp_0.98"]
    assert cfg.branches["fip_alpha0"][0].integrator.alpha == 0.0
    mem32 = cfg.branches["fip_mem32"][0]
    assert (mem32.batch_size, mem32.memory_batch) == (96, 32)
    for name in ("fip_alpha0", "fip_mem32"):  # the rest of the path and the fine-tuning as FIP's
        path, finetune = cfg.branches[name]
        assert path.objectives == fip[0].objectives and path.prune == fip[0].prune
        assert finetune == fip[1]
    # fip_hard: GMP's hard mask schedule over the whole budget, FIP's invariance term, no pull
    (hard,) = cfg.branches["fip_hard"]
    assert hard.prune == gmp[0].prune and hard.steps == gmp[0].steps
    assert hard.metric == fip[0].metric and hard.integrator == fip[0].integrator
    assert [o.kind for o in hard.objectives] == ["task_ce"]
    assert {sp.examples(st) for st in raw["branches"].values()} == {
        sp.ARCHS["lenet300"]["budget"] * sp.BATCH
    }
