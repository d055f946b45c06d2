"""Experiment trackers as loggers: ``tensorboard``, ``mlflow`` and ``wandb`` (optional extras).

Each is a sink of the logger hook like ``csv``: every committed chunk's metrics, keyed
``<branch>/<metric>`` against the chunk's global step, and the run's ``config.yaml`` once. The
library is imported when the logger is built, so a config that names one without the extra
installed fails before the run writes anything, naming the extra. Files stay inside the run
directory by default (TensorBoard event files, an MLflow file store, a W&B offline run), so a
run directory is complete on its own; ``mlflow.tracking_uri`` and ``wandb.mode: online`` send
them to a server instead. A resumed run continues the same MLflow/W&B run (its id is kept in
the logger's directory).
"""

from __future__ import annotations

import importlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from fipframe.core.configs import PluginConfig, RunFile
from fipframe.core.logger import Logger
from fipframe.errors import ConfigError
from fipframe.plugins import hookimpl
from fipframe.registry import Spec

ID_FILE = "fipframe-run-id"


def _require(module: str, extra: str, kind: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"loggers: kind {kind!r} needs {module.split('.')[0]} ({exc}); install it with: "
            f"pip install 'fipframe[{extra}]'"
        ) from None


def _inside(run_dir: Path, name: str, kind: str) -> Path:
    root = Path(run_dir).resolve()
    path = (root / name).resolve()
    if root != path and root not in path.parents:
        raise ConfigError(f"loggers: {kind} directory {name!r} resolves outside {root}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _config_text(run_dir: Path) -> str | None:
    path = Path(run_dir) / "config.yaml"
    return path.read_text() if path.exists() else None


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """``<branch>/<metric>`` -> value for the record's finite numeric metrics."""
    out = {}
    for name, value in record["metrics"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{record['branch']}/{name}"] = float(value)
    return out


class _Tracker(Logger):
    """Writes the config once, on the first record (config.yaml exists by then)."""

    def __init__(self, config: Any, *, run_dir: Path):
        super().__init__(config)
        self.run_dir = Path(run_dir)
        self._config_written = False

    def log(self, record: dict[str, Any]) -> None:
        if not self._config_written:
            text = _config_text(self.run_dir)
            if text is not None:
                self._write_config(text)
                self._config_written = True
        self._write(record["global_step"], _scalars(record))

    def _write_config(self, text: str) -> None:
        raise NotImplementedError

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError


# -- TensorBoard -------------------------------------------------------------------------------
class TensorBoardConfig(PluginConfig):
    kind: Literal["tensorboard"] = "tensorboard"
    logdir: RunFile = Field("tensorboard", description="event files' directory in the run")


class TensorBoardLogger(_Tracker):
    def __init__(self, config: TensorBoardConfig, *, run_dir: Path):
        super().__init__(config, run_dir=run_dir)
        _require("tensorboard", "tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = _inside(run_dir, config.logdir, "tensorboard")
        self._writer = SummaryWriter(log_dir=str(self.logdir))

    def _write_config(self, text: str) -> None:
        self._writer.add_text("config", "```yaml\n" + text + "\n```", 0)

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


# -- MLflow ------------------------------------------------------------------------------------
class MLflowConfig(PluginConfig):
    kind: Literal["mlflow"] = "mlflow"
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: a file store in the run's `mlruns`"
    )
    experiment: str = Field("fipframe", description="experiment name")
    run_name: str | None = Field(None, description="run name (default: the run directory's)")


class MLflowLogger(_Tracker):
    def __init__(self, config: MLflowConfig, *, run_dir: Path):
        super().__init__(config, run_dir=run_dir)
        mlflow = _require("mlflow", "mlflow", "mlflow")
        own = _inside(run_dir, "mlruns", "mlflow")
        if config.tracking_uri is None:
            # MLflow 3 keeps file stores only on request; this one is the run's own, read by
            # `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN/mlruns`
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri = config.tracking_uri or own.as_uri()
        self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(config.experiment)
        experiment = (
            found.experiment_id if found else self.client.create_experiment(config.experiment)
        )
        id_file = own / ID_FILE
        self.run_id = id_file.read_text().strip() if id_file.exists() else None
        if self.run_id is None:
            name = config.run_name or Path(run_dir).resolve().name
            self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
            id_file.write_text(self.run_id + "\n")
        else:  # a resumed run continues its MLflow run
            self.client.update_run(self.run_id, status="RUNNING")

    def _write_config(self, text: str) -> None:
        self.client.log_text(self.run_id, text, "config.yaml")

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in scalars.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / space``; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


# -- Weights & Biases --------------------------------------------------------------------------
class WandbConfig(PluginConfig):
    kind: Literal["wandb"] = "wandb"
    project: str = Field("fipframe", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team or user)")
    name: str | None = Field(None, description="run name (default: the run directory's)")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline writes in the run's `wandb` (`wandb sync` uploads it)"
    )
    dir: RunFile = Field("wandb", description="W&B's directory in the run")


class WandbLogger(_Tracker):
    def __init__(self, config: WandbConfig, *, run_dir: Path):
        super().__init__(config, run_dir=run_dir)
        wandb = _require("wandb", "wandb", "wandb")
        own = _inside(run_dir, config.dir, "wandb")
        id_file = own / ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            name=config.name or Path(run_dir).resolve().name,
            mode=config.mode,
            dir=str(own),
            id=run_id,
            resume="allow",
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        # branches restart from the trunk's step: every metric is plotted against global_step
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def _write_config(self, text: str) -> None:
        import yaml

        self.run.config.update(yaml.safe_load(text) or {}, allow_val_change=True)

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        if scalars:
            self.run.log({**scalars, "global_step": step})

    def close(self) -> None:
        self.run.finish()


@hookimpl
def fipframe_register_loggers() -> list[Spec]:
    return [
        Spec(
            "tensorboard",
            TensorBoardConfig,
            TensorBoardLogger,
            "TensorBoard event files in the run directory (extra: tensorboard)",
        ),
        Spec(
            "mlflow",
            MLflowConfig,
            MLflowLogger,
            "MLflow metrics, a file store in the run directory by default (extra: mlflow)",
        ),
        Spec(
            "wandb",
            WandbConfig,
            WandbLogger,
            "Weights & Biases, offline in the run directory by default (extra: wandb)",
        ),
    ]
