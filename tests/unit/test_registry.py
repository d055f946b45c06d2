from typing import Literal

import pytest

from fipframe.core.configs import PluginConfig
from fipframe.errors import PluginError
from fipframe.registry import Entry, Registry, Spec


class FooConfig(PluginConfig):
    kind: Literal["foo"] = "foo"


def test_spec_requires_matching_literal_kind():
    with pytest.raises(PluginError, match="must declare `kind: Literal\\['bar'\\]`"):
        Spec("bar", FooConfig, object)


def test_spec_rejects_bad_kind_names():
    with pytest.raises(PluginError, match="lower_snake_case"):
        Spec("Foo-1", FooConfig, object)


def test_clash_names_both_plugins():
    reg = Registry()
    reg.add(Entry("metric", Spec("foo", FooConfig, object), "first", "dist-a", "1.0"))
    with pytest.raises(PluginError) as err:
        reg.add(Entry("metric", Spec("foo", FooConfig, object), "second", "dist-b", "2.0"))
    assert "'first' (dist-a 1.0)" in str(err.value)
    assert "'second' (dist-b 2.0)" in str(err.value)
    # the same kind in another family is no clash
    reg.add(Entry("objective", Spec("foo", FooConfig, object), "second", "dist-b", "2.0"))
    assert reg.kinds("objective") == ["foo"]


def test_unknown_kind_lists_valid_and_suggests(pm_builtin):
    with pytest.raises(PluginError) as err:
        pm_builtin.registry.get("metric", "bhatacharyya")
    msg = str(err.value)
    assert "valid kinds: bhattacharyya, kl, l2" in msg
    assert "did you mean 'bhattacharyya'?" in msg


def test_unknown_family():
    with pytest.raises(PluginError, match="families: manifold"):
        Registry().kinds("nope")
