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

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Records committed before an interruption that this sink was not given (resume).
        The default logs each; a sink that can see what it already holds may skip those."""
        for record in records:
            self.log(record)

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Flush and release resources."""
