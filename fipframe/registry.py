"""Kinds per family: what each plugin registered, under which name, from which distribution.

A *spec* describes one implementation: its ``kind`` (the name used in configs), its pydantic
config model, a factory that builds it, a one-line summary and declared capabilities.
The registry refuses a kind that another plugin already registered, naming both plugins,
so a name never silently means two things.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel

from fipframe.errors import PluginError

FAMILIES: tuple[str, ...] = (
    "manifold",
    "metric",
    "integrator",
    "objective",
    "adapter",
    "dataset",
    "logger",
)
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Spec:
    """One registered implementation.

    Args:
        kind: the name configs use (``kind: bhattacharyya``); lower_snake_case.
        config: pydantic model of its settings; must have ``kind: Literal["<kind>"]``.
        factory: builds the implementation; what it receives depends on the family
            (see docs/plugins.md).
        summary: one line shown by ``fipframe plugins``.
        capabilities: declared abilities other parts may rely on (e.g. ``"needs_metric"``).
            Declare them once, as the implementation class's ``capabilities`` class attribute
            (the five interfaces have one); the spec reads it. Capabilities given here are
            added to the class's (for factories that are functions).
    """

    kind: str
    config: type[BaseModel]
    factory: Callable[..., Any]
    summary: str = ""
    capabilities: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not _KIND_RE.match(self.kind):
            raise PluginError(f"kind {self.kind!r} must be lower_snake_case ([a-z][a-z0-9_]*)")
        annotation = self.config.model_fields.get("kind")
        if annotation is None or get_args(annotation.annotation) != (self.kind,):
            raise PluginError(
                f"config model {self.config.__name__} of kind {self.kind!r} must declare "
                f"`kind: Literal[{self.kind!r}]`"
            )
        declared = getattr(self.factory, "capabilities", frozenset())
        if not isinstance(declared, (frozenset, set)):
            raise PluginError(
                f"{getattr(self.factory, '__name__', self.factory)!r} of kind {self.kind!r}: "
                f"`capabilities` must be a frozenset of strings, not {type(declared).__name__}"
            )
        if getattr(self.factory, "needs_metric", False) is True:  # the attribute before 0.2
            declared = declared | {"needs_metric"}
        object.__setattr__(self, "capabilities", frozenset(self.capabilities) | declared)


@dataclass(frozen=True)
class Entry:
    """A spec together with the plugin and distribution that registered it."""

    family: str
    spec: Spec
    plugin: str
    dist: str | None = None
    version: str | None = None

    @property
    def origin(self) -> str:
        where = f" ({self.dist} {self.version})" if self.dist else ""
        return f"plugin {self.plugin!r}{where}"


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.5) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


class Registry:
    """Kinds per family. Built from a plugin manager by :func:`fipframe.plugins.build_registry`."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {f: {} for f in FAMILIES}

    def check_family(self, family: str) -> None:
        if family not in self._entries:
            raise PluginError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")

    def clash(self, entry: Entry) -> str | None:
        """The message for ``entry`` clashing with a registered kind, or None."""
        self.check_family(entry.family)
        old = self._entries[entry.family].get(entry.spec.kind)
        if old is None:
            return None
        return (
            f"{entry.family} kind {entry.spec.kind!r} is registered by both "
            f"{old.origin} and {entry.origin}"
        )

    def add(self, entry: Entry) -> None:
        """Register ``entry``; raise PluginError naming both plugins if the kind is taken."""
        problem = self.clash(entry)
        if problem:
            raise PluginError(problem)
        self._entries[entry.family][entry.spec.kind] = entry

    def kinds(self, family: str) -> list[str]:
        self.check_family(family)
        return sorted(self._entries[family])

    def entries(self, family: str) -> list[Entry]:
        self.check_family(family)
        return [self._entries[family][k] for k in sorted(self._entries[family])]

    def get(self, family: str, kind: str) -> Entry:
        self.check_family(family)
        try:
            return self._entries[family][kind]
        except KeyError:
            valid = self.kinds(family)
            raise PluginError(
                f"unknown {family} kind {kind!r}; valid kinds: {', '.join(valid) or '(none)'}"
                + did_you_mean(kind, valid)
            ) from None

    def spec(self, family: str, kind: str) -> Spec:
        return self.get(family, kind).spec

    def build(self, family: str, config: BaseModel, /, **kwargs: Any) -> Any:
        """Build the implementation ``config.kind`` of ``family`` with its factory."""
        return self.spec(family, config.kind).factory(config, **kwargs)  # type: ignore[attr-defined]
