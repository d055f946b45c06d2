"""Built-in loggers: ``csv`` (long-format metrics.csv in the run directory) and ``stdout``
(one JSON line per chunk, for piping into other tools)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from fipframe.core.configs import PluginConfig, RunFile
from fipframe.core.logger import Logger
from fipframe.plugins import hookimpl
from fipframe.registry import Spec


class CSVConfig(PluginConfig):
    kind: Literal["csv"] = "csv"
    filename: RunFile = Field(
        "metrics.csv", description="file name inside the run directory (relative, no '..')"
    )


class CSVLogger(Logger):
    def __init__(self, config: CSVConfig, *, run_dir: Path):
        super().__init__(config)
        path = Path(run_dir) / config.filename
        new = not path.exists()
        self._file = path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["global_step", "branch", "stage", "step", "name", "value"])

    def log(self, record: dict[str, Any]) -> None:
        for name, value in record["metrics"].items():
            self._writer.writerow(
                [
                    record["global_step"],
                    record["branch"],
                    record["stage"],
                    record["step"],
                    name,
                    value,
                ]
            )
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class StdoutConfig(PluginConfig):
    kind: Literal["stdout"] = "stdout"


class StdoutLogger(Logger):
    def __init__(self, config: StdoutConfig, *, run_dir: Path):
        super().__init__(config)

    def log(self, record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


@hookimpl
def fipframe_register_loggers() -> list[Spec]:
    return [
        Spec("csv", CSVConfig, CSVLogger, "long-format metrics.csv in the run directory"),
        Spec("stdout", StdoutConfig, StdoutLogger, "one JSON line per chunk on stdout"),
    ]
