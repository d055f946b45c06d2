"""Logger: a sink for each chunk's metrics (configured per run, see ``loggers:``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Logger(ABC):
    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def log(self, record: dict[str, Any]) -> None:
        """One chunk: ``{"branch", "stage", "step", "global_step", "metrics": {...}}``."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Flush and release resources."""
