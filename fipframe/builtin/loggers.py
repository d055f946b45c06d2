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
from fipframe.errors import ConfigError
from fipframe.plugins import hookimpl
from fipframe.registry import Spec
from fipframe.traversal.artifact import atomic_write_bytes


class CSVConfig(PluginConfig):
    kind: Literal["csv"] = "csv"
    filename: RunFile = Field(
        "metrics.csv", description="file name inside the run directory (relative, no '..')"
    )


HEADER = ["global_step", "branch", "stage", "step", "name", "value"]


class CSVLogger(Logger):
    def __init__(self, config: CSVConfig, *, run_dir: Path):
        super().__init__(config)
        root = Path(run_dir).resolve()
        path = (root / config.filename).resolve()
        if root not in path.parents:  # a symlink inside the run pointing out of it
            raise ConfigError(f"loggers: csv filename {config.filename!r} resolves outside {root}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(HEADER)
            self._file.flush()

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Rows of records a kill kept from this file: the first missed record may be partly
        written (killed mid-record), so its rows and a torn last line are cut, then all are
        written in full."""
        self._file.close()
        lines = self.path.read_text().splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # torn by the kill
        first = records[0]
        key = [str(first["global_step"]), first["branch"], first["stage"], str(first["step"])]
        while len(lines) > 1 and next(csv.reader([lines[-1]]))[:4] == key:
            lines.pop()
        atomic_write_bytes(self.path, "".join(lines).encode())
        self._file = self.path.open("a", newline="")
        self._writer = csv.writer(self._file)
        super().replay(records)

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
