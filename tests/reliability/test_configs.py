"""Bad configs are refused before anything runs: one line naming the field and what was
expected, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import time

import pytest
import yaml

from fipframe.cli import main

CASES = [  # (override, expected words in the one error line)
    (
        "stages.0.integrator.lr=-1",
        "stages[0].integrator(gradient).lr: Input should be greater than 0",
    ),
    ("stages.0.integrator.lr=0", "lr: Input should be greater than 0"),
    ("stages.0.integrator.lr=.nan", "lr: Input should be a finite number"),
    ("stages.0.integrator.lr=.inf", "lr: Input should be a finite number"),
    ("branches.fip.0.integrator.alpha=-1000", "alpha: Input should be greater than or equal to 0"),
    ("branches.fip.0.integrator.alpha=.nan", "alpha: Input should be a finite number"),
    ("stages.0.integrator={kind: eps_step, eps: -0.1}", "eps: Input should be greater than 0"),
    ("stages.0.integrator={kind: eps_step, eps: .inf}", "eps: Input should be a finite number"),
    ("stages.0.integrator.lr={start: 0, end: 0}", "lr: must be > 0 somewhere along the stage"),
    ("stages.0.integrator.lr={start: -1, end: 1}", "lr: must stay >= 0 along the stage"),
    (
        "stages.0.integrator.lr={start: -1, end: 1, shape: exponential}",
        "exponential ramp needs start > 0 and end > 0",
    ),
    ("stages.0.steps=true", "stages[0].steps: expected a number, got a boolean (true)"),
    ("stages.0.batch_size=false", "batch_size: expected a number, got a boolean (false)"),
    ("model.hidden=[true]", "model(mlp).hidden: expected a number, got a boolean"),
    ("model.hidden=[0]", "model(mlp).hidden[0]: Input should be greater than or equal to 1"),
    ("model.hidden=[-5]", "model(mlp).hidden[0]: Input should be greater than or equal to 1"),
    (
        "run.seed=1180591620717411303424",
        "run.seed: Input should be less than or equal to 4294967295",
    ),
    ("stages.0.steps=10000000000", "stages[0].steps: Input should be less than or equal to"),
    ("run.chunk=.inf", "run.chunk: Input should be a finite number"),
    (
        "stages.0.objectives=[{kind: task_ce, weight: -1}]",
        "weight: Input should be greater than or equal to 0",
    ),
    (
        "loggers=[{kind: csv, filename: ../../outside.csv}]",
        "filename: '../../outside.csv' leaves the run directory",
    ),
    ("loggers=[{kind: csv, filename: /tmp/outside.csv}]", "leaves the run directory"),
    ("stages.0.integrator.lr=[", "--set stages.0.integrator.lr: the value '[' is not valid YAML"),
    (
        "stages.7.steps=3",
        "--set stages.7.steps: no such place in the config (stages.7: the list has 1 items)",
    ),
    ("stagez.0=1", "did you mean 'stages'?"),
    ("run={seed: 3, seed: 9}", "duplicate key 'seed' at line 1, column 11 (first at column 2)"),
    ("stages.0.integrator.lr=1e300", "lr: 1e+300 is beyond float32's range"),
    ("stages.0.integrator.optimizer={weight_decay: 1e300}", "weight_decay: 1e+300 is beyond"),
    (
        "stages.0.integrator.optimizer.eps=1e6",
        "optimizer.eps: Input should be less than or equal to 1",
    ),
    ("model={kind: vit, hidden: 65, heads: 4}", "hidden (65) must be a multiple of heads (4)"),
    ("name=" + "x" * 200, "name: String should have at most 100 characters"),
    (
        "loggers=[{kind: csv, filename: metrics.jsonl}]",
        "'metrics.jsonl' is one of fipframe's own files",
    ),
    (
        "loggers=[{kind: csv, filename: points/x.csv}]",
        "'points/x.csv' is one of fipframe's own files",
    ),
    ("loggers=[{kind: csv, filename: .lock}]", "'.lock' is one of fipframe's own files"),
    (
        "loggers=[csv, {kind: csv, filename: ./metrics.csv}]",
        "loggers[1] writes './metrics.csv', which loggers[0] writes too",
    ),
    (
        "data={kind: permuted_mnist, permutation_seed: 1180591620717411303424}",
        "permutation_seed: Input should be less than or equal to 4294967295",
    ),
]


@pytest.mark.parametrize("override,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_value_is_refused_naming_the_field(tiny, tmp_path, capsys, override, expected):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("device", ["mps", "cuda", "cuda:7"])
def test_device_this_machine_lacks_is_refused_at_validation(tiny, tmp_path, capsys, device):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > int(device.partition(":")[2] or 0):
        pytest.skip("this machine has that device")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    assert main(["validate", str(path), "--set", f"run.device={device}"]) == 2
    err = capsys.readouterr().err
    assert (
        f"run.device: '{device}'" in err
        and "not available on this machine" in err
        or ("CUDA device(s)" in err)
    )


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: t\nstages: []\nbranches:\n  fip: []\n  other: []\n  fip:\n    - {name: x}\n"
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: duplicate key 'fip' at line 6 (first at line 4)" in err
    (tmp_path / "c.json").write_text('{"name": "a", "name": "b"}')
    assert main(["validate", str(tmp_path / "c.json")]) == 2
    assert "duplicate key 'name'" in capsys.readouterr().err


def _laughs(levels: int) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghijk"
    for prev, name in zip(names[:levels], names[1 : levels + 1], strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\nname: x\n"


@pytest.mark.parametrize(
    "name,text,expected",
    [
        ("laughs.yaml", _laughs(9), "more values than allowed at line"),
        ("deep.yaml", "x: " + "[" * 1000 + "]" * 1000 + "\n", "nested deeper than allowed"),
        ("deep.json", '{"x": ' + "[" * 1000 + "]" * 1000 + "}", "nested deeper than allowed"),
        (
            "alias-deep.yaml",
            "a: &a " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n",
            "alias nests deeper",
        ),
        ("big.yaml", "x: [" + ",".join(["1"] * 600_000) + "]\n", "is larger than a config"),
        ("latin1.yaml", "name: caf\xe9\n", "not UTF-8 text (byte 9, line 1)"),
    ],
)
def test_hostile_files_are_refused_quickly_before_parsing(tmp_path, capsys, name, text, expected):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1" if "latin1" in name else "utf-8"))
    t0 = time.monotonic()
    assert main(["validate", str(path)]) == 2
    assert time.monotonic() - t0 < 10  # the unguarded billion laughs took minutes and GBs
    err = capsys.readouterr().err
    assert expected in err and str(path) in err
    assert "FIPFRAME_CONFIG_MAX" in err or "UTF-8" in err
    assert len(err) < 2000  # the input is never rendered whole


def test_limits_are_configurable(tmp_path, monkeypatch, capsys, tiny):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    monkeypatch.setenv("FIPFRAME_CONFIG_MAX_BYTES", "100")
    assert main(["validate", str(path)]) == 2
    assert "limit 100; raise it with FIPFRAME_CONFIG_MAX_BYTES" in capsys.readouterr().err
    monkeypatch.setenv("FIPFRAME_CONFIG_MAX_BYTES", "lots")
    assert main(["validate", str(path)]) == 2
    assert (
        "FIPFRAME_CONFIG_MAX_BYTES='lots': expected a positive integer" in capsys.readouterr().err
    )
    monkeypatch.delenv("FIPFRAME_CONFIG_MAX_BYTES")
    monkeypatch.setenv("FIPFRAME_CONFIG_MAX_DEPTH", "3")
    assert main(["validate", str(path)]) == 2
    assert "nested deeper than allowed" in capsys.readouterr().err


def test_a_huge_invalid_list_gives_a_short_error(tmp_path, capsys, tiny):
    tiny["model"]["hidden"] = ["x"] * 20_000  # 20,000 bad values: the error lists 25 and counts
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny, default_flow_style=True))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "... and 19975 more problems" in err and len(err.splitlines()) == 26


def test_python_mappings_get_the_same_limits(tiny):
    from fipframe import load_config
    from fipframe.errors import ConfigError

    node: dict = {}
    deep = node
    for _ in range(100):
        deep["x"] = {}
        deep = deep["x"]
    tiny["extra"] = node
    with pytest.raises(ConfigError, match="nested deeper than allowed"):
        load_config(tiny)


def test_the_reserved_names_cover_every_file_a_run_writes(tiny, tmp_path):
    """RunFile refuses fipframe's own files by name; the list must not fall behind."""
    from fipframe import load_config, run
    from fipframe.core.configs import RESERVED, RESERVED_DIRS

    tiny["loggers"] = ["csv"]
    run(load_config(tiny), out=tmp_path / "run")
    written = {p.name for p in (tmp_path / "run").iterdir()} - {"metrics.csv"}  # the logger's
    uncovered = {n for n in written if n not in RESERVED | set(RESERVED_DIRS) and n[0] != "."}
    assert not uncovered, uncovered
