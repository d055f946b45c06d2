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

    def replay(self, records: list[dict[str, Any]], delivered: int) -> None:
        """On resume: every committed record, of which those with ``seq <= delivered`` were
        given to the sinks before the interruption. The default logs the others; a sink that
        can see what it holds (a file) may check it instead."""
        for record in records:
            if record["seq"] > delivered:
                self.log(record)

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Flush and release resources."""
