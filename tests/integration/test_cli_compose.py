"""The command line for daily use: help without loading torch, key=value overrides, seeds and
comparisons across runs, presets show, validate --deep, a closed pipe."""

from __future__ import annotations

import subprocess
import sys

import yaml

from fipframe.cli import COMMANDS, main


def write(tmp_path, config, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_help_loads_neither_torch_nor_plugins_and_every_command_has_examples():
    code = (
        "import sys\nfrom fipframe.cli import main\n"
        "for argv in (['--help'], *[[c, '--help'] for c in sys.argv[1:]]):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
        "print('torch' in sys.modules, 'fipframe.builtin.metrics' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *COMMANDS], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("False False")
    assert out.stdout.count("examples:") == 1 + len(COMMANDS)  # the top level and each command


def test_closed_pipe_is_quiet(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fipframe", "schema"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.read(10)
    proc.stdout.close()  # `fipframe schema | head -c 10`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_positional_overrides_and_presets_show(tiny, tmp_path, capsys):
    path = write(tmp_path, tiny)
    assert main(["validate", str(path), "run.seed=5", "branches.fip.0.metric.kind=l2"]) == 0
    assert main(["validate", str(path), "run.sed=5"]) == 2
    assert "run.sed: unknown field; did you mean 'seed'?" in capsys.readouterr().err
    assert main(["validate", str(path), str(path)]) == 2
    assert "give one config file, got 2" in capsys.readouterr().err
    assert main(["presets", "show", "continual-split-mnist"]) == 0
    shown = capsys.readouterr().out
    assert "repeat:" in shown and "stage_defaults:" in shown
    assert main(["presets", "show", "continual-split-mnist", "--resolved"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert [s["name"] for s in resolved["branches"]["ewc"]] == ["task1", "task2", "task3", "task4"]
    assert main(["presets", "show", "split-mnistt"]) == 2
    assert "did you mean 'split-mnist'" in capsys.readouterr().err


def test_validate_deep_builds_data_and_model(tmp_path, tiny, capsys):
    assert main(["validate", str(write(tmp_path, tiny)), "--deep"]) == 0
    assert "data and model built: 25,450 parameters" in capsys.readouterr().out
    missing = {
        **tiny,
        "data": {"kind": "npz", "path": str(tmp_path / "no.npz"), "tasks": [[0], [1]]},
    }
    path = write(tmp_path, missing, "m.yaml")
    assert main(["validate", str(path)]) == 0  # the shape of the config is fine
    capsys.readouterr()
    assert main(["validate", str(path), "--deep"]) == 2
    assert f"error: data.path: {tmp_path / 'no.npz'} does not exist" in capsys.readouterr().err


def test_seeds_then_report_across_runs(tiny, tmp_path, capsys):
    out = tmp_path / "seeds"
    argv = ["run", str(write(tmp_path, tiny)), "--seeds", "0", "1", "--out", str(out)]
    assert main([*argv, "--baseline", "finetune", "stages.0.steps=20"]) == 0
    printed = capsys.readouterr().out
    assert "mean ± sample std over 2 runs" in printed
    seeds = [yaml.safe_load((out / f"seed-{s}/config.yaml").read_text()) for s in (0, 1)]
    assert [c["run"]["seed"] for c in seeds] == [0, 1]
    assert all(c["stages"][0]["steps"] == 20 for c in seeds)
    fip = next(line for line in printed.splitlines() if line.startswith("fip ("))
    assert fip.split()[-1] in ("lead", "tie", "loss") and "2/2" in fip
    assert (out / "comparison.png").stat().st_size > 20_000 and (out / "comparison.svg").exists()
    # the numbers are the runs' own: the comparison's mean is the mean of each run's table
    from fipframe.eval.compare import Comparison
    from fipframe.eval.results import RunResult

    finals = [RunResult.load(out / f"seed-{s}").accuracies("fip") for s in (0, 1)]
    want = 100 * sum(sum(f) / len(f) for f in finals) / 2
    assert f"{want:.2f} ±" in fip
    assert Comparison.load([out / "seed-0", out / "seed-1"]).averages("fip") == [
        sum(f) / len(f) for f in finals
    ]
    # run again: the finished seeds are read back, not run again
    before = (out / "seed-0/metrics.jsonl").read_text()
    assert main([*argv, "stages.0.steps=20"]) == 0
    assert (out / "seed-0/metrics.jsonl").read_text() == before
    capsys.readouterr()
    assert (
        main(["report", str(out / "seed-0"), str(out / "seed-1"), "--out", str(tmp_path / "c")])
        == 0
    )
    assert (tmp_path / "c.txt").read_text().startswith("test accuracy (%), mean ± sample std")
    assert main(["report", str(out / "seed-0"), str(out / "seed-1"), "--baseline", "nope"]) == 2
    assert "--baseline: no branch 'nope'" in capsys.readouterr().err
    # the same --out with another config: refused, naming what differs, nothing changed
    assert main([*argv, "stages.0.steps=25"]) == 2
    assert "seed-0: holds a run of another config (stages.0.steps: 20 there, 25 now)" in (
        capsys.readouterr().err
    )
    assert (out / "seed-0/metrics.jsonl").read_text() == before
    # runs of different configs compared: said above the table
    other = tmp_path / "other"
    assert main(["run", str(write(tmp_path, tiny)), "--out", str(other), "stages.0.steps=25"]) == 0
    capsys.readouterr()
    assert main(["report", str(out / "seed-0"), str(other), "--out", str(tmp_path / "d")]) == 0
    assert "note: the runs differ beyond run.seed, in stages.0.steps" in capsys.readouterr().out


class _StopAtStart:
    """Ctrl-C as the traversal starts: config.yaml, run.json, origin.json are written, no
    checkpoint yet."""

    @staticmethod
    def fipframe_traversal_start(run):
        raise KeyboardInterrupt


def test_seeds_restart_a_run_stopped_before_its_first_checkpoint(tiny, tmp_path, capsys):
    import pytest

    import fipframe
    from fipframe import load_config
    from fipframe.plugins import make_plugin_manager

    _StopAtStart.fipframe_traversal_start = fipframe.hookimpl(_StopAtStart.fipframe_traversal_start)
    out = tmp_path / "s"
    path = write(tmp_path, tiny)
    pm = make_plugin_manager(plugins=[_StopAtStart()])
    with pytest.raises(KeyboardInterrupt):
        fipframe.run(load_config(path, overrides=["run.seed=0"], pm=pm), out=out / "seed-0")
    left = {p.name for p in (out / "seed-0").iterdir()}
    assert "config.yaml" in left and "run.json" in left and "checkpoint.safetensors" not in left
    assert main(["run", str(path), "--seeds", "0", "--out", str(out)]) == 0
    assert (out / "seed-0/summary.json").is_file()
    assert main(["run", str(path), "--baseline", "fip"]) == 2
    assert "--baseline goes with --seeds" in capsys.readouterr().err
