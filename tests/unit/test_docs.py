"""Docs keep up with the code: every hook and every built-in kind is documented."""

from __future__ import annotations

import inspect
from pathlib import Path

from fipframe import hookspecs
from fipframe.plugins import make_plugin_manager
from fipframe.registry import FAMILIES

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_hook_is_documented():
    text = (DOCS / "hooks.md").read_text()
    hooks = [
        n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("fipframe_")
    ]
    assert len(hooks) >= 12
    missing = [h for h in hooks if f"### `{h}`" not in text]
    assert not missing, f"undocumented hooks in docs/hooks.md: {missing}"


def test_every_builtin_kind_is_documented():
    text = (DOCS / "config.md").read_text()
    registry = make_plugin_manager(entry_points_enabled=False).registry
    missing = [f"{f}:{k}" for f in FAMILIES for k in registry.kinds(f) if f"`{k}`" not in text]
    assert not missing, f"kinds missing from docs/config.md: {missing}"
