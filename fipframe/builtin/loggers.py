"""Built-in loggers: ``csv`` (long-format metrics.csv in the run directory) and ``stdout``
(one JSON line per chunk, for piping into other tools)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from fipframe.core.configs import RESERVED, RESERVED_DIRS, PluginConfig, RunFile
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
        own = path.relative_to(root).as_posix()
        if own.split("/")[0] in RESERVED or own.split("/")[0] in RESERVED_DIRS:
            raise ConfigError(  # a symlink inside the run pointing at one of its own files
                f"loggers: csv filename {config.filename!r} resolves to the run's own {own}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._new = new
        self._file = path.open("a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(HEADER)
            self._file.flush()

    def replay(self, records: list[dict[str, Any]], delivered: int) -> None:
        """Make the file hold exactly the rows of the committed records: a file that is gone
        is rebuilt from all of them; otherwise a torn last line and the rows of a
        half-written record are cut and the records after ``delivered`` written in full."""
        self._file.close()
        # a file deleted (or never written) is rebuilt whole
        todo = records if self._new else [r for r in records if r["seq"] > delivered]
        if not self._new:
            lines = self.path.read_bytes().splitlines(keepends=True)
            if lines and not lines[-1].endswith(b"\n"):
                lines.pop()  # torn by the kill
            if todo:
                first = todo[0]
                key = [str(first["global_step"]), first["branch"], first["stage"]]
                key.append(str(first["step"]))
                while len(lines) > 1 and next(csv.reader([lines[-1].decode()]))[:4] == key:
                    lines.pop()
            atomic_write_bytes(self.path, b"".join(lines))
        self._file = self.path.open("a", newline="")
        self._writer = csv.writer(self._file)
        for record in todo:
            self.log(record)

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
