"""Plugins through real entry points: built-ins, the example distribution, broken and
clashing distributions written to disk and discovered by importlib.metadata."""

from __future__ import annotations

import pytest

from fipframe.plugins import make_plugin_manager
from tests.conftest import make_distribution


def test_builtins_come_through_the_entry_point_group(pm):
    source = pm.sources["fipframe:metrics"]
    assert source.dist == "fipframe"
    assert source.module == "fipframe.builtin.metrics"
    assert pm.registry.get("metric", "kl").plugin == "fipframe:metrics"


def test_example_plugin_registers_metric_objective_adapter(pm):
    reg = pm.registry
    for family, kind in [
        ("metric", "tempered_kl"),
        ("objective", "weight_decay_to_start"),
        ("adapter", "lenet5"),
    ]:
        entry = reg.get(family, kind)
        assert entry.plugin == "fipframe-example:example"
        assert entry.dist == "fipframe-example"
        assert entry.version == "0.1.0"


def test_builtin_only_manager_has_no_example(pm_builtin):
    assert "tempered_kl" not in pm_builtin.registry.kinds("metric")
    assert "kl" in pm_builtin.registry.kinds("metric")


def test_broken_plugin_is_reported_by_name_and_the_rest_works(tmp_path, monkeypatch):
    make_distribution(
        tmp_path,
        "brokenplug",
        "brokenplug_mod",
        "raise ImportError('needs a library that is not installed')\n",
        "broken",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager()
    [failure] = [f for f in pm.failures if f.dist == "brokenplug"]
    assert failure.name == "brokenplug:broken"
    assert "needs a library that is not installed" in failure.error
    assert "brokenplug" in str(failure)
    assert "kl" in pm.registry.kinds("metric")
    assert "tempered_kl" in pm.registry.kinds("metric")


CLASH = """
from typing import Literal
import fipframe
from fipframe.core import PluginConfig
from fipframe.builtin.metrics import KL

class KLConfig(PluginConfig):
    kind: Literal["kl"] = "kl"

class OtherConfig(PluginConfig):
    kind: Literal["other_metric"] = "other_metric"

@fipframe.hookimpl
def fipframe_register_metrics():
    return [fipframe.Spec("kl", KLConfig, KL), fipframe.Spec("other_metric", OtherConfig, KL)]
"""


def test_clashing_plugin_is_left_out_whole_naming_both(tmp_path, monkeypatch):
    make_distribution(tmp_path, "clashplug", "clashplug_mod", CLASH, "clash")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager()
    reg = pm.registry
    [failure] = [f for f in pm.failures if f.dist == "clashplug"]
    assert "'fipframe:metrics' (fipframe 0.1.0)" in failure.error
    assert "'clashplug:clash' (clashplug 1.0)" in failure.error
    assert reg.get("metric", "kl").plugin == "fipframe:metrics"
    assert "other_metric" not in reg.kinds("metric")  # all or nothing
    assert "clashplug:clash" not in pm.sources


def test_disable_switch(monkeypatch):
    monkeypatch.setenv("FIPFRAME_DISABLE_PLUGINS", "fipframe-example:example")
    pm = make_plugin_manager()
    assert "tempered_kl" not in pm.registry.kinds("metric")


def test_in_process_plugin_object():
    from typing import Literal

    import fipframe
    from fipframe.builtin.metrics import L2Logits
    from fipframe.core import PluginConfig

    class HalfConfig(PluginConfig):
        kind: Literal["half_l2"] = "half_l2"

    class Plugin:
        @fipframe.hookimpl
        def fipframe_register_metrics(self):
            return [fipframe.Spec("half_l2", HalfConfig, L2Logits)]

    pm = make_plugin_manager(plugins=[Plugin()])
    assert pm.registry.get("metric", "half_l2").plugin.startswith("Plugin")
    assert "half_l2" not in make_plugin_manager().registry.kinds("metric")  # no global state


@pytest.mark.parametrize("bad", ["not a list", [object()]])
def test_registration_hook_returning_junk_is_a_failure(bad):
    import fipframe

    class Junk:
        @fipframe.hookimpl
        def fipframe_register_metrics(self):
            return bad

    pm = make_plugin_manager(plugins=[Junk()])
    assert any("fipframe.Spec" in f.error or "Spec" in f.error for f in pm.failures), pm.failures
    assert "kl" in pm.registry.kinds("metric")
