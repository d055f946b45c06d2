from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fipframe.api import load_config, preset_path
from fipframe.config import config_model, read_file
from fipframe.errors import ConfigError


def problems(exc: pytest.ExceptionInfo) -> list[str]:
    return exc.value.problems


def test_preset_validates(pm):
    config = load_config(preset="split-mnist", pm=pm)
    assert set(config.branches) == {"finetune", "replay", "fip"}
    assert config.branches["fip"][0].metric.kind == "bhattacharyya"  # bare-kind shorthand
    assert config.manifold.kind == "euclidean"  # default slot value


def test_unknown_kind_names_path_valid_kinds_and_closest(tiny, pm_builtin):
    tiny["branches"]["fip"][0]["metric"] = {"kind": "bhatacharyya"}
    with pytest.raises(ConfigError) as exc:
        load_config(tiny, pm=pm_builtin)
    [line] = problems(exc)
    assert line.startswith("branches.fip[0].metric.kind: unknown metric kind 'bhatacharyya'")
    assert "valid kinds: bhattacharyya, kl, l2" in line
    assert line.endswith("did you mean 'bhattacharyya'?")


def test_wrong_type_and_out_of_range_each_get_a_line(tiny, pm):
    tiny["stages"][0]["steps"] = -1
    tiny["stages"][0]["batch_size"] = "lots"
    tiny["branches"]["fip"][0]["integrator"]["alpha"] = "strong"
    tiny["run"]["chunk"] = -1
    with pytest.raises(ConfigError) as exc:
        load_config(tiny, pm=pm)
    lines = problems(exc)
    assert any(
        line.startswith("stages[0].steps: Input should be greater than or equal to 0")
        for line in lines
    ), lines
    assert any(line.startswith("stages[0].batch_size:") for line in lines), lines
    assert any(line.startswith("branches.fip[0].integrator(penalty).alpha") for line in lines), (
        lines
    )
    assert any(line.startswith("run.chunk:") for line in lines), lines


def test_extra_field_is_rejected(tiny, pm):
    tiny["stages"][0]["integrator"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError) as exc:
        load_config(tiny, pm=pm)
    assert problems(exc) == ["stages[0].integrator(gradient).learning_rate: unknown field"]


def test_missing_kind(tiny, pm):
    tiny["model"] = {"hidden": [3]}
    with pytest.raises(ConfigError) as exc:
        load_config(tiny, pm=pm)
    first = problems(exc)[0]
    assert first.startswith("model: missing 'kind' (one of: ") and "lenet300, lenet5, mlp" in first


def test_cross_component_checks_are_reported_together(tiny, pm):
    del tiny["branches"]["fip"][0]["metric"]
    tiny["branches"]["finetune"][0]["metric"] = "kl"
    tiny["stages"][0]["task"] = 7
    with pytest.raises(ConfigError) as exc:
        load_config(tiny, pm=pm)
    lines = problems(exc)
    assert "branches.fip[0].metric: integrator 'penalty' needs a metric" in lines[-1] or any(
        "branches.fip[0].metric: integrator 'penalty' needs a metric" in x for x in lines
    )
    assert any(
        x.startswith("branches.finetune[0].metric: integrator 'gradient' does not use")
        for x in lines
    )
    assert any(x.startswith("stages[0].task: 7 is out of range; data has 2 tasks") for x in lines)


def test_memory_needed(tiny, pm):
    tiny["memory"]["size"] = 0
    with pytest.raises(ConfigError, match=r"branches.fip\[0\]: uses stored inputs but memory.size"):
        load_config(tiny, pm=pm)


def test_malformed_yaml_names_file_and_line(tmp_path, pm):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [\n  - {name: a\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad, pm=pm)
    [line] = problems(exc)
    assert line.startswith(f"{bad}: malformed YAML at line ")


def test_missing_file_and_non_mapping(tmp_path, pm):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml", pm=pm)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        read_file(tmp_path / "list.yaml")


def test_json_and_overrides(tmp_path, tiny, pm):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny))
    config = load_config(path, overrides=["stages.0.steps=7", "run.seed=11"], pm=pm)
    assert config.stages[0].steps == 7 and config.run.seed == 11
    # a missing section is created (`run:` may be absent) and then validated like any other
    with pytest.raises(ConfigError, match="nope: unknown field"):
        load_config(path, overrides=["nope.x=1"], pm=pm)
    with pytest.raises(ConfigError, match=r"--set stages.5.steps: no such place .*has 1 items"):
        load_config(path, overrides=["stages.5.steps=1"], pm=pm)
    with pytest.raises(ConfigError, match=r"--set run.seed: the value '\[' is not valid YAML"):
        load_config(path, overrides=["run.seed=["], pm=pm)


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'split-mnist'"):
        preset_path("split-mnsit")


def test_plugins_ship_presets_and_a_broken_hook_is_named(tmp_path):
    from fipframe import hookimpl
    from fipframe.api import presets
    from fipframe.plugins import make_plugin_manager

    (tmp_path / "mine.yaml").write_text(
        "# my preset\n"
        + (Path(__file__).parents[2] / "fipframe/presets/split-mnist.yaml").read_text()
    )

    class Ships:
        @hookimpl
        def fipframe_register_presets(self):
            return [str(tmp_path)]

    pm = make_plugin_manager(entry_points_enabled=False, plugins=[Ships()])
    assert presets(pm)["mine"] == "my preset" and "split-mnist" in presets(pm)
    assert load_config(preset="mine", pm=pm).name == "split-mnist"

    class Clash:
        @hookimpl
        def fipframe_register_presets(self):
            (tmp_path / "clash").mkdir(exist_ok=True)
            (tmp_path / "clash" / "split-mnist.yaml").write_text("name: x\n")
            return [str(tmp_path / "clash")]

    with pytest.raises(ConfigError, match="preset 'split-mnist' of .*clash.* has the name of"):
        presets(make_plugin_manager(entry_points_enabled=False, plugins=[Clash()]))

    class Bare:
        @hookimpl
        def fipframe_register_presets(self):
            return str(tmp_path)  # a string, not a list

    with pytest.raises(ConfigError, match="must return a list of directories"):
        presets(make_plugin_manager(entry_points_enabled=False, plugins=[Bare()]))

    class Broken:
        @hookimpl
        def fipframe_register_presets(self):
            raise OSError("disk gone")

    with pytest.raises(ConfigError, match="fipframe_register_presets failed .*disk gone"):
        presets(make_plugin_manager(entry_points_enabled=False, plugins=[Broken()]))


def test_schema_follows_installed_plugins(pm, pm_builtin):
    with_example = json.dumps(config_model(pm.registry, pm).model_json_schema())
    builtin = json.dumps(config_model(pm_builtin.registry, pm_builtin).model_json_schema())
    assert "tempered_kl" in with_example and "tempered_kl" not in builtin
    assert "bhattacharyya" in builtin


def test_configs_are_frozen(tiny, pm):
    config = load_config(tiny, pm=pm)
    with pytest.raises(Exception, match="frozen"):
        config.stages[0].steps = 3  # type: ignore[misc]


# -- fuzzing: every mutated config validates or raises ConfigError -----------------------------
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(-2, 12), max_size=4),
    st.sampled_from(["kl", "l2", "penalty", "mlp", "nope", "task_ce", {}, {"kind": "kl"}]),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw):
    from tests.conftest import TINY

    config = copy.deepcopy(TINY)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(config) if p]
        path = draw(st.sampled_from(paths))
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(_LEAVES)
        else:
            parent[path[-1]] = draw(_LEAVES)
    return config


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_configs_validate_or_raise_config_error(config):
    from fipframe.plugins import make_plugin_manager

    pm = _PM.setdefault("pm", make_plugin_manager())
    try:
        load_config(config, pm=pm)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


_PM: dict = {}


def test_yaml_off_means_progress_off(tmp_path, tiny, pm):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny).replace("progress: 'off'", "progress: off"))
    assert "progress: off\n" in path.read_text()
    assert load_config(path, pm=pm).run.progress == "off"


def test_step_rule_needs_what_the_metric_declares(tiny):
    """A metric without a product cannot feed the natural step; validate says so up front."""
    from typing import Literal

    import fipframe
    from fipframe.builtin.metrics import KL
    from fipframe.core import PluginConfig
    from fipframe.plugins import make_plugin_manager
    from fipframe.registry import Spec

    class DivergenceOnlyConfig(PluginConfig):
        kind: Literal["divergence_only"] = "divergence_only"

    class DivergenceOnly(KL):
        capabilities = frozenset()  # e.g. a divergence with no usable second derivative

    class Plugin:
        @fipframe.hookimpl
        def fipframe_register_metrics(self):
            return [Spec("divergence_only", DivergenceOnlyConfig, DivergenceOnly, "test")]

    pm = make_plugin_manager(plugins=[Plugin()])
    fip = tiny["branches"]["fip"][0]
    fip["metric"] = "divergence_only"
    load_config(tiny, pm=pm)  # the penalty step only needs the divergence
    fip["integrator"] = {"kind": "natural", "eps": 0.1}
    with pytest.raises(
        ConfigError,
        match=r"branches.fip\[0\].metric: integrator 'natural' needs a "
        r"metric with solve; metric 'divergence_only' declares none",
    ):
        load_config(tiny, pm=pm)
    fip["metric"] = "kl"
    load_config(tiny, pm=pm)


def test_task_count_comes_from_explicit_groups_and_der_needs_memory(tiny, pm):
    tiny["data"] = {"kind": "split_cifar10", "tasks": [[0, 1], [2, 3]]}
    tiny["stages"][0]["task"] = 3
    with pytest.raises(ConfigError, match=r"stages\[0\].task: 3 is out of range; data has 2 tasks"):
        load_config(tiny, pm=pm)
    tiny["data"] = {"kind": "mnist_fmnist"}
    with pytest.raises(ConfigError, match="data has 2 tasks"):
        load_config(tiny, pm=pm)
    tiny["stages"][0]["task"] = 0
    tiny["memory"]["size"] = 0
    del tiny["branches"]["fip"]
    tiny["branches"]["finetune"][0]["objectives"] = ["task_ce", "der"]
    with pytest.raises(ConfigError, match=r"branches.finetune\[0\]: uses stored inputs"):
        load_config(tiny, pm=pm)


def test_capabilities_are_declared_once_on_the_class(tiny):
    """The Spec reads the class attribute; a third-party memory user is checked like replay."""
    from typing import Literal

    import fipframe
    from fipframe.builtin.objectives import FromMemory
    from fipframe.core import PluginConfig
    from fipframe.plugins import make_plugin_manager
    from fipframe.registry import Spec

    class MineConfig(PluginConfig):
        kind: Literal["mine"] = "mine"

    class BadConfig(PluginConfig):
        kind: Literal["bad"] = "bad"

    class Mine(FromMemory):
        def loss(self, params, logits, batch):
            return next(iter(params.values())).new_zeros(())

    class Plugin:
        @fipframe.hookimpl
        def fipframe_register_objectives(self):
            return [Spec("mine", MineConfig, Mine, "test")]

    pm = make_plugin_manager(plugins=[Plugin()])
    assert pm.registry.spec("objective", "mine").capabilities == {"uses_memory"}
    assert "needs_metric" in pm.registry.spec("integrator", "penalty").capabilities
    assert "metric:solve" in pm.registry.spec("integrator", "natural").capabilities
    assert "needs_metric" not in pm.registry.spec("integrator", "gradient").capabilities
    tiny["memory"]["size"] = 0
    del tiny["branches"]["fip"]
    tiny["branches"]["finetune"][0]["objectives"] = ["task_ce", "mine"]
    with pytest.raises(ConfigError, match=r"branches.finetune\[0\]: uses stored inputs"):
        load_config(tiny, pm=pm)
    with pytest.raises(fipframe.PluginError, match="must be a frozenset"):
        Spec("bad", BadConfig, type("Bad", (), {"capabilities": "uses_memory"}), "x")
