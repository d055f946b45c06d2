"""The errors fipframe raises on purpose, each with one clear message.

``ConfigError`` carries a list of problems, one per line, each naming the field path
(``stages[1].metric.kind``) or the file it is about. The CLI prints them and exits with 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class FipframeError(Exception):
    """Base class of every error fipframe raises on purpose."""


class ConfigError(FipframeError):
    """A configuration (or its file) is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: str | Iterable[str], source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + p for p in self.problems)


class PluginError(FipframeError):
    """A plugin failed to load, registered a clashing kind, or a kind is unknown."""


class RunDirError(FipframeError):
    """A run directory cannot be used as it is: damaged or missing files, a checkpoint that
    does not belong to it, a config that does not match it, another process writing it.
    ``problems`` holds one line per problem, each naming the file."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class TraversalError(FipframeError):
    """A traversal cannot go on (non-finite values that rollback could not cure, bad state)."""
