"""The plugin manager: built-ins and third-party plugins, loaded the same way.

There is no module-global manager: :func:`make_plugin_manager` returns a fresh one, so tests
and embedding applications can hold several side by side.

Plugins come from the entry-point group ``fipframe``. fipframe's own distribution announces its
built-ins there too; :data:`BUILTIN_MODULES` is used only when fipframe runs from a source tree
that was never installed (no entry-point metadata). A plugin that fails to import, or that
registers a kind another plugin already has, is recorded in ``pm.failures`` by name and left
out whole; the rest keep working.

A plugin whose hooks do not match fipframe's hook specifications (a wrong signature) is
recorded as failed too. Hooks with unknown names, ``fipframe_*`` functions not marked with
``@fipframe.hookimpl``, and names in ``FIPFRAME_DISABLE_PLUGINS`` that match no plugin are
kept in ``pm.warnings`` (they would otherwise be ignored silently).

Environment switches:
    FIPFRAME_DISABLE_PLUGINS: comma-separated plugins not to load: ``dist:entry`` names (as
        ``fipframe plugins`` shows them) or bare distribution names (all of its entries).
    FIPFRAME_NO_ENTRY_POINTS: if set to 1, load built-ins only.
"""

from __future__ import annotations

import importlib
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from fipframe import hookspecs
from fipframe.registry import FAMILIES, Entry, Registry, Spec

ENTRY_POINT_GROUP = "fipframe"
PROJECT = "fipframe"
BUILTIN_MODULES: tuple[str, ...] = (
    "fipframe.builtin.manifolds",
    "fipframe.builtin.metrics",
    "fipframe.builtin.integrators",
    "fipframe.builtin.sparsity",
    "fipframe.builtin.geometry",
    "fipframe.builtin.objectives",
    "fipframe.builtin.continual",
    "fipframe.builtin.paths",
    "fipframe.builtin.adapters",
    "fipframe.builtin.datasets",
    "fipframe.builtin.loggers",
    "fipframe.builtin.trackers",
    "fipframe.builtin.checks",
)
_REGISTER_HOOKS = {family: f"fipframe_register_{family}s" for family in FAMILIES}

hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was left out, and why."""

    name: str
    dist: str | None
    error: str

    def __str__(self) -> str:
        where = f" from {self.dist}" if self.dist else ""
        return f"plugin {self.name!r}{where} was not loaded: {self.error}"


SWITCHES = (
    "to silence a plugin: FIPFRAME_DISABLE_PLUGINS=<name or distribution>; built-ins only: "
    "FIPFRAME_NO_ENTRY_POINTS=1"
)


@dataclass(frozen=True)
class PluginSource:
    """Where a loaded plugin came from."""

    name: str
    dist: str | None
    version: str | None
    module: str


class FipPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers where plugins came from and which failed."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.warnings: list[str] = []
        self.sources: dict[str, PluginSource] = {}
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        """The registry of every loaded plugin's kinds (built on first use)."""
        if self._registry is None:
            self._registry = build_registry(self)
        return self._registry

    def register_source(self, plugin: Any, source: PluginSource) -> bool:
        """Register ``plugin``; a plugin pluggy refuses (hooks that do not match their
        specification) is recorded in ``failures`` instead. Returns whether it registered."""
        try:
            self.register(plugin, name=source.name)
        except Exception as exc:  # pluggy.PluginValidationError, or a plugin's own error
            if self.get_plugin(source.name) is not None:
                self.unregister(name=source.name)
            self.failures.append(PluginFailure(source.name, source.dist, _describe(exc)))
            return False
        self.sources[source.name] = source
        self._check_hooks(plugin, source.name)
        return True

    def _check_hooks(self, plugin: Any, name: str) -> None:
        """Warn of hooks no specification knows and of unmarked ``fipframe_*`` functions."""
        from fipframe.registry import did_you_mean

        known = [n for n in dir(hookspecs) if n.startswith("fipframe_")]
        marked = set()
        for caller in self.get_hookcallers(plugin) or []:
            marked.add(caller.name)
            if not caller.has_spec():
                self.warnings.append(
                    f"plugin {name!r}: hook {caller.name!r} is not a fipframe hook and is never "
                    "called" + did_you_mean(caller.name, known)
                )
        for attr in dir(plugin):
            unmarked = attr in known and attr not in marked
            if unmarked and callable(getattr(plugin, attr, None)):
                self.warnings.append(
                    f"plugin {name!r}: {attr} is not marked with @fipframe.hookimpl and is "
                    "never called"
                )


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _disabled() -> set[str]:
    raw = os.environ.get("FIPFRAME_DISABLE_PLUGINS", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def make_plugin_manager(
    *, entry_points_enabled: bool | None = None, plugins: Iterable[Any] = ()
) -> FipPluginManager:
    """Return a new plugin manager with built-ins, entry-point plugins and ``plugins``.

    Args:
        entry_points_enabled: load the ``fipframe`` entry-point group. Defaults to True unless
            ``FIPFRAME_NO_ENTRY_POINTS=1``; when False only the built-ins are loaded.
        plugins: extra plugin objects (modules, classes or instances) to register in-process.
    """
    if entry_points_enabled is None:
        entry_points_enabled = os.environ.get("FIPFRAME_NO_ENTRY_POINTS") != "1"
    pm = FipPluginManager()
    disabled = _disabled()
    matched: set[str] = set()
    have_builtins = False
    if entry_points_enabled:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=_ep_order):
            dist = ep.dist.name if ep.dist else None
            name = f"{dist}:{ep.name}" if dist else ep.name
            hit = {name, dist} & disabled
            if hit:
                matched |= hit
                continue
            if name in pm.sources:
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not take others down
                pm.failures.append(PluginFailure(name, dist, _describe(exc)))
                continue
            version = ep.dist.version if ep.dist else None
            registered = pm.register_source(plugin, PluginSource(name, dist, version, ep.value))
            have_builtins |= dist == PROJECT and registered
    if not have_builtins:
        from fipframe import __version__

        for module in BUILTIN_MODULES:
            name = f"{PROJECT}:{module.rsplit('.', 1)[-1]}"
            hit = {name, PROJECT} & disabled
            if hit:
                matched |= hit
                continue
            if name not in pm.sources:
                source = PluginSource(name, PROJECT, __version__, module)
                pm.register_source(importlib.import_module(module), source)
    for i, plugin in enumerate(plugins):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
        pm.register_source(plugin, PluginSource(name, None, None, repr(plugin)))
    for name in sorted(disabled - matched):
        pm.warnings.append(
            f"FIPFRAME_DISABLE_PLUGINS: {name!r} matches no installed plugin (give a "
            "distribution name or dist:entry as `fipframe plugins` lists them)"
        )
    pm.registry  # noqa: B018  (build now, so pm.failures is complete on return)
    return pm


def _ep_order(ep: Any) -> tuple[int, str]:
    """Built-ins first, so a third-party clash is the one left out."""
    dist = ep.dist.name if ep.dist else ""
    return (0 if dist == PROJECT else 1, f"{dist}:{ep.name}")


def build_registry(pm: FipPluginManager) -> Registry:
    """Collect every plugin's specs into a Registry.

    A plugin's specs are taken all or none: if one of them clashes with a kind already
    registered (or its hook raises), the plugin is recorded in ``pm.failures`` and none of its
    specs are added, so a half-registered plugin never exists.
    """
    registry = Registry()
    order = list(pm.sources)  # registration order: built-ins first
    collected: dict[str, list[Entry]] = {name: [] for name in order}
    broken: dict[str, str] = {}
    for family, hook_name in _REGISTER_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            name = impl.plugin_name
            if name in broken:
                continue
            try:
                specs = impl.function() or []
                if not all(isinstance(s, Spec) for s in specs):
                    raise TypeError(f"{hook_name} must return a list of fipframe.Spec")
            except Exception as exc:
                broken[name] = _describe(exc)
                continue
            src = pm.sources.get(name)
            collected.setdefault(name, []).extend(
                Entry(family, s, name, src.dist if src else None, src.version if src else None)
                for s in specs
            )
    for name, entries in collected.items():
        if name in broken:
            pm.failures.append(_failure(pm, name, broken[name]))
            continue
        problem = _first_clash(registry, entries)
        if problem:
            pm.failures.append(_failure(pm, name, problem))
            continue
        for entry in entries:
            registry.add(entry)
    return registry


def _first_clash(registry: Registry, entries: list[Entry]) -> str | None:
    seen: dict[tuple[str, str], Entry] = {}
    for entry in entries:
        key = (entry.family, entry.spec.kind)
        if key in seen:
            return f"{entry.family} kind {entry.spec.kind!r} is registered twice by {entry.origin}"
        seen[key] = entry
        problem = registry.clash(entry)
        if problem:
            return problem
    return None


def _failure(pm: FipPluginManager, name: str, error: str) -> PluginFailure:
    src = pm.sources.get(name)
    if name in pm.sources:
        pm.unregister(name=name)
        del pm.sources[name]
    return PluginFailure(name, src.dist if src else None, error)


def call_hook(pm: Any, name: str, error: type[Exception], what: str = "", **kwargs: Any) -> list:
    """Call every implementation of hook ``name`` (in pluggy's order) and collect the results;
    an implementation that raises becomes ``error`` naming its plugin (pluggy's own call
    would give a bare traceback). Hook wrappers need pluggy's call and get it."""
    caller = getattr(pm.hook, name)
    impls = caller.get_hookimpls()
    if any(getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False) for i in impls):
        return list(caller(**kwargs))
    results = []
    for impl in reversed(impls):  # pluggy calls the last registered first
        try:
            result = impl.function(*[kwargs[a] for a in impl.argnames])
        except (Exception, SystemExit) as exc:  # a plugin may not end the host's process
            raise error(
                f"plugin {impl.plugin_name!r}: {name} failed ({_describe(exc)}){what}"
            ) from exc
        if result is not None:
            results.append(result)
    return results


def load(
    *, entry_points_enabled: bool | None = None, plugins: Iterable[Any] = ()
) -> tuple[FipPluginManager, Registry]:
    """Make a plugin manager and its registry in one call."""
    pm = make_plugin_manager(entry_points_enabled=entry_points_enabled, plugins=plugins)
    return pm, pm.registry
