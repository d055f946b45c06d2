"""FIP inside other libraries' training: a Lightning callback and an Avalanche plugin.

Each module imports its library when imported itself (extras ``lightning`` and ``avalanche``);
both wrap :class:`fipframe.FIPRegularizer`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fipframe.errors import ConfigError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{module} is not installed ({exc}); install it with: pip install 'fipframe[{extra}]'"
        ) from None
