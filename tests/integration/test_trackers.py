"""TensorBoard, MLflow and W&B (offline) loggers: a real run logs to each, and what each wrote,
read back with that library's own reader, equals the run's committed records."""

from __future__ import annotations

import json
import struct

import pytest

from fipframe import load_config, run
from fipframe.errors import ConfigError


def _expected(root) -> dict[str, dict[int, float]]:
    """``branch/metric`` -> {global_step: value} from metrics.jsonl."""
    want: dict[str, dict[int, float]] = {}
    for line in (root / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for name, value in rec.get("metrics", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                want.setdefault(f"{rec['branch']}/{name}", {})[rec["global_step"]] = value
    return want


def _tensorboard(root) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(root / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    return {t: {e.step: e.value for e in ea.Scalars(t)} for t in ea.Tags()["scalars"]}


def _mlflow(root) -> dict[str, dict[int, float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    run_id = (root / "mlruns/fipframe-run-id").read_text().strip()
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run_id)]
    return {
        k: {m.step: m.value for m in client.get_metric_history(run_id, k)} for k in got.data.metrics
    }


def _wandb_records(path):
    """The protobuf records of a W&B transaction log: a 7-byte header, then 32 KiB blocks of
    LevelDB-log chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break  # zero fill after the last record
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending


def _wandb(root) -> dict[str, dict[int, float]]:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (root / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    got: dict[str, dict[int, float]] = {}
    config_keys: set[str] = set()
    for data in _wandb_records(path):
        rec = pb.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") == "config":
            config_keys |= {item.key for item in rec.config.update}
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for item in rec.history.item}  # fmt: skip
        for k, v in row.items():
            if not k.startswith("_") and k != "global_step":
                got.setdefault(k, {})[row["global_step"]] = v
    assert {"model", "stages", "branches"} <= config_keys  # the run's config.yaml
    return got


def test_every_tracker_holds_the_committed_records(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    tiny["loggers"] = ["tensorboard", "mlflow", "wandb"]
    root = tmp_path / "run"
    run(load_config(tiny), out=root)
    want = _expected(root)
    assert "fip/loss/divergence" in want and len(want["fip/loss/divergence"]) >= 3
    for reader in (_tensorboard, _mlflow, _wandb):
        got = reader(root)
        assert set(got) == set(want), reader.__name__
        for key, series in want.items():
            assert set(got[key]) == set(series), (reader.__name__, key)
            for step, value in series.items():
                assert got[key][step] == pytest.approx(value, rel=1e-6), (reader, key, step)


def test_mlflow_logger_continues_its_run_and_names_its_extra(tmp_path):
    pytest.importorskip("mlflow")
    from fipframe.builtin.trackers import MLflowConfig, MLflowLogger, _require

    first = MLflowLogger(MLflowConfig(), run_dir=tmp_path)
    first.close()
    again = MLflowLogger(MLflowConfig(), run_dir=tmp_path)  # a resumed run
    assert again.run_id == first.run_id
    again.close()
    with pytest.raises(ConfigError, match=r"needs nosuchlib .*pip install 'fipframe\[x\]'"):
        _require("nosuchlib", "x", "k")
