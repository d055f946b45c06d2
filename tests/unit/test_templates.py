"""Configs that compose: stage_defaults and repeat written out, overrides on the written-out
config (the `kind` shorthand and its long form are one place), did-you-mean for unknown keys."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fipframe import load_config
from fipframe.configfile import apply_overrides, expand_templates
from fipframe.errors import ConfigError


def test_repeat_writes_one_stage_per_value_with_values_in_place():
    data = {
        "stage_defaults": {"steps": 7, "integrator": {"kind": "gradient", "lr": 0.1}},
        "stages": [{"name": "t0", "task": 0, "objectives": ["task_ce"]}],
        "branches": {
            "b": [
                {
                    "repeat": {"task": [1, 2], "w": [0.5, 2.0]},
                    "stage": {
                        "name": "task{task}-w{w}",
                        "task": "{task}",
                        "integrator": {"lr": 0.01},
                        "objectives": ["task_ce", {"kind": "ewc", "weight": "{w}"}],
                    },
                },
                {"name": "last", "task": 3, "steps": 1, "integrator": {"kind": "penalty"}},
            ]
        },
    }
    out = expand_templates(copy.deepcopy(data))
    assert "stage_defaults" not in out
    assert out["stages"] == [
        {"steps": 7, "integrator": {"kind": "gradient", "lr": 0.1}, "name": "t0", "task": 0,
         "objectives": ["task_ce"]}
    ]  # fmt: skip
    b = out["branches"]["b"]
    assert [s["name"] for s in b] == ["task1-w0.5", "task2-w2.0", "last"]
    assert [s["task"] for s in b] == [1, 2, 3]  # "{task}" alone takes the number itself
    assert b[1]["objectives"][1] == {"kind": "ewc", "weight": 2.0}
    # same kind (or none): merged field by field; another kind replaces the default
    assert b[0]["integrator"] == {"kind": "gradient", "lr": 0.01}
    assert b[2]["integrator"] == {"kind": "penalty"} and b[2]["steps"] == 1


def test_repeat_of_several_stages_keeps_their_order():
    out = expand_templates(
        {"stages": [{"repeat": {"i": [0, 1]}, "stages": [{"name": "d{i}"}, {"name": "u{i}"}]}]}
    )
    assert [s["name"] for s in out["stages"]] == ["d0", "u0", "d1", "u1"]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"repeat": {"i": [0]}, "stage": {"name": "x{i}"}, "extra": 1}, "unexpected 'extra'"),
        ({"repeat": {"i": [0]}}, "one of `stage:`"),
        ({"repeat": {"i": []}, "stage": {"name": "x{i}"}}, r"repeat.i: expected a non-empty"),
        ({"repeat": {"i": [0], "j": [1, 2]}, "stage": {"name": "{i}{j}"}}, "differ in length"),
        ({"repeat": {"i": [0, 1]}, "stage": {"name": "same"}}, "'i' appear nowhere"),
        ({"repeat": [0, 1], "stage": {"name": "x"}}, "expected a mapping VAR"),
    ],
)
def test_bad_templates_name_the_place(item, message):
    with pytest.raises(ConfigError, match=message) as err:
        expand_templates({"branches": {"b": [{"name": "ok"}, item]}})
    assert "branches.b[1]" in str(err.value)


def test_stage_defaults_must_be_a_mapping():
    with pytest.raises(ConfigError, match="stage_defaults: expected a mapping"):
        expand_templates({"stage_defaults": [1], "stages": []})


def test_rewritten_presets_write_out_every_stage():
    split = load_config(preset="continual-split-mnist")
    assert len(split.branches) == 12
    for name, stages in split.branches.items():
        assert [(s.name, s.task, s.steps) for s in stages] == [
            (f"task{t}", t, 500) for t in (1, 2, 3, 4)
        ], name
    assert split.branches["fip-penalty-kl"][2].integrator.alpha == 3000.0
    assert split.branches["fine-tuning"][0].integrator.lr == 0.001
    permuted = load_config(preset="continual-permuted-mnist")
    assert [s.task for s in permuted.branches["ewc"]] == list(range(1, 10))
    assert permuted.branches["fine-tuning"][0].integrator.lr == 0.0001  # merged over the default
    ens = load_config(preset="ensemble-cifar10-vgg16")
    fge = [s.name for s in ens.branches["fge"]]
    assert fge[:4] == ["down0", "up0", "down1", "up1"] and fge[-1] == "down9" and len(fge) == 19
    assert ens.branches["fge"][1].integrator.lr.start == 0.0005
    assert [s.name for s in ens.branches["fip"]] == [f"m{i}" for i in range(10)]


LONGHAND = Path(__file__).resolve().parents[1] / "data/presets-longhand"


@pytest.mark.parametrize(
    "name", ["continual-split-mnist", "continual-permuted-mnist", "ensemble-cifar10-vgg16"]
)
def test_templated_presets_equal_the_longhand_files_they_replaced(name):
    """tests/data/presets-longhand holds the presets as they were before templates (commit
    4d4f2ed): the templated files must validate to the very same configs."""
    assert load_config(preset=name).dump() == load_config(LONGHAND / f"{name}.yaml").dump()


def test_written_out_config_reloads_to_the_same(tmp_path):
    import yaml

    config = load_config(preset="continual-split-mnist")
    path = tmp_path / "out.yaml"
    path.write_text(yaml.safe_dump(config.dump()))
    assert load_config(path).dump() == config.dump()


def test_overrides_reach_the_written_out_stages_and_shorthands():
    config = load_config(
        preset="continual-split-mnist",
        overrides=[
            "branches.ewc.2.steps=9",  # a stage written by repeat
            "branches.fip-penalty-kl.0.metric.kind=bhattacharyya",  # `metric: kl` in the file
            "branches.er.1.objectives.0.weight=3",  # `task_ce` in the file
        ],
    )
    assert [s.steps for s in config.branches["ewc"]] == [500, 500, 9, 500]
    assert config.branches["fip-penalty-kl"][0].metric.kind == "bhattacharyya"
    assert config.branches["fip-penalty-kl"][1].metric.kind == "kl"
    assert config.branches["er"][1].objectives[0].weight == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.sed=1", "run.sed: unknown field; did you mean 'seed'?"),
        ("brances.x=1", "brances: unknown field; did you mean 'branches'?"),
        ("branches.fip.0.integrator.alpah=3", r"\(penalty\).alpah: unknown field; did you mean"),
        ("branches.fip.0.metric.kindd=kl", "did you mean 'kind'"),
    ],
)  # fmt: skip
def test_unknown_override_keys_say_what_was_meant(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(preset="split-mnist", overrides=[override])


def test_apply_overrides_refuses_a_missing_list_and_values_that_are_not_kinds():
    with pytest.raises(ConfigError, match="no such place"):
        apply_overrides({"stages": []}, ["stages.0.steps=1"])
    with pytest.raises(ConfigError, match=r"stages.0.name is a value, not a mapping"):
        apply_overrides({"stages": [{"name": "a"}]}, ["stages.0.name.x=1"])
    with pytest.raises(ConfigError, match=r"no such place"):
        apply_overrides({"stages": [{"integrator": {"kind": "penalty"}}]},
                        ["stages.0.integrator.kind.x=1"])  # fmt: skip


def test_shorthand_and_long_form_merge_alike_and_aliases_are_copies():
    defaults = {"stage_defaults": {"metric": {"kind": "kl", "temperature": 2}}}
    short = expand_templates({**copy.deepcopy(defaults), "stages": [{"metric": "kl"}]})
    long = expand_templates({**copy.deepcopy(defaults), "stages": [{"metric": {"kind": "kl"}}]})
    assert short["stages"] == long["stages"] == [{"metric": {"kind": "kl", "temperature": 2}}]
    other = expand_templates(
        {"stage_defaults": {"metric": "kl"}, "stages": [{"metric": {"temperature": 3}}]}
    )
    assert other["stages"] == [{"metric": {"kind": "kl", "temperature": 3}}]
    import yaml

    data = expand_templates(yaml.safe_load("stages:\n- &s {name: a, metric: {kind: kl}}\n- *s\n"))
    apply_overrides(data, ["stages.0.metric.kind=l2"])
    assert [s["metric"]["kind"] for s in data["stages"]] == ["l2", "kl"]


def test_stage_defaults_take_overrides_before_they_are_written_out():
    config = load_config(preset="continual-split-mnist", overrides=["stage_defaults.steps=7"])
    assert {s.steps for s in config.stages} == {7}
    assert {s.steps for stages in config.branches.values() for s in stages} == {7}
