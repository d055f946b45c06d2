"""``fipframe sweep``: a 2 x 2 grid of cells x seeds on the local process pool and on Ray (a
local Ray instance); every run a normal run directory, the same numbers on both backends, a
second invocation continuing instead of repeating."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from fipframe.cli import main
from fipframe.eval.results import RunResult

GRID = "branches.fip.0.integrator.alpha=1,10"


def _sweep(tiny, tmp_path, out, *extra):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return main(["sweep", str(path), "--seeds", "0", "1", "--grid", GRID, "--out", str(out),
                 "--threads", "1", *extra])  # fmt: skip


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    import copy

    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "local"
    assert _sweep(copy.deepcopy(TINY), tmp, out, "--workers", "2") == 0
    return out


def test_every_cell_and_seed_is_a_normal_finished_run(local):
    spec = json.loads((local / "sweep.json").read_text())
    assert [c["name"] for c in spec["cells"]] == ["alpha=1", "alpha=10"]
    for alpha in (1, 10):
        for seed in (0, 1):
            run = local / f"alpha={alpha}" / f"seed-{seed}"
            config = yaml.safe_load((run / "config.yaml").read_text())
            assert config["run"]["seed"] == seed
            assert config["branches"]["fip"][0]["integrator"]["alpha"] == alpha
            result = RunResult.load(run)
            assert all(result.finished(b) for b in result.branches)
    text = (local / "summary.txt").read_text()
    assert "2 cells x 2 seeds" in text and text.count("2/2") == 2


def test_a_second_invocation_continues(local, tmp_path, capsys):
    import copy
    import shutil

    from tests.conftest import TINY

    shutil.rmtree(local / "alpha=10" / "seed-1")  # one run lost; the others are kept
    before = (local / "alpha=1/seed-0/metrics.jsonl").read_text()
    assert _sweep(copy.deepcopy(TINY), tmp_path, local, "--workers", "1") == 0
    err = capsys.readouterr().err
    assert err.count("done before") == 3 and "alpha=10/seed-1 ran" in err
    assert (local / "alpha=1/seed-0/metrics.jsonl").read_text() == before
    assert main(["report", str(local)]) == 0
    assert "alpha=10" in capsys.readouterr().out


def test_ray_backend_gives_the_local_numbers(local, tiny, tmp_path):
    pytest.importorskip("ray")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert _sweep(tiny, tmp_path, tmp_path / "ray", "--backend", "ray") == 0
    finally:
        ray.shutdown()
    for cell in ("alpha=1", "alpha=10"):
        for seed in (0, 1):
            a = RunResult.load(local / cell / f"seed-{seed}").final
            b = RunResult.load(tmp_path / "ray" / cell / f"seed-{seed}").final
            assert a == b, (cell, seed)


def test_cells_that_would_share_a_directory_are_refused_and_equal_values_merged():
    from fipframe.errors import ConfigError
    from fipframe.sweep import cells

    assert [c.name for c in cells(["branches.fip.0.integrator.alpha=5.0,5.00,5"])] == ["alpha=5.0"]
    with pytest.raises(ConfigError, match="would share the directory 'name=a_b'"):
        cells(["name=a b,a?b"])
    with pytest.raises(ConfigError, match="run.seed is what --seeds sets"):
        cells(["run.seed=0,1"])


def test_bad_sweeps_are_refused_before_anything_runs(tiny, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "bad"
    assert main(["sweep", str(path), "--grid", "branches.fip.0.integrator.alpah=1,2",
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "sweep cell alpah=1, seed 0:" in err and "did you mean 'alpha'" in err
    assert not out.exists()
    assert main(["sweep", str(path), "--grid", "run.seed", "--out", str(out)]) == 2
    assert "expected PATH=V1,V2" in capsys.readouterr().err
    ok = tmp_path / "ok"
    assert main(["sweep", str(path), "--grid", "run.chunk=10", "--out", str(ok),
                 "--workers", "1", "--threads", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["sweep", str(path), "--grid", "run.chunk=5", "--out", str(ok)]) == 2
    assert "holds another sweep" in capsys.readouterr().err
    # the file edited where it does not change the runs (a comment, progress): the same sweep
    edited = {**tiny, "run": {**tiny["run"], "progress": "lines"}}
    path.write_text("# a comment\n" + yaml.safe_dump(edited))
    assert main(["sweep", str(path), "--grid", "run.chunk=10", "--out", str(ok),
                 "--workers", "1", "--threads", "1"]) == 0  # fmt: skip
    assert "done before" in capsys.readouterr().err


CRASH = """
import os

import fipframe


@fipframe.hookimpl
def fipframe_traversal_start(run):
    if run.config.name == "crash":
        os._exit(3)  # the worker process dies, as an out-of-memory kill would end it
"""


@pytest.mark.parametrize("lockstep", [1, 2], ids=["alone", "lockstep"])
def test_a_worker_that_dies_is_a_failed_run_and_the_sweep_reports(
    tiny, tmp_path, monkeypatch, capsys, lockstep
):
    """With --lockstep 2 both runs share the worker that dies; its runs are run again one by
    one, so only the one that kills its worker fails."""
    from tests.conftest import make_distribution

    plugins = tmp_path / "plugins"
    make_distribution(plugins, "crashplug", "crashplug_mod", CRASH)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("PYTHONPATH", str(plugins))  # the spawned workers find it too
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "sw"
    code = main(["sweep", str(path), "--grid", "name=ok,crash", "--out", str(out),
                 "--workers", "2", "--threads", "1", "--lockstep", str(lockstep)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "name=crash/seed-0 failed: its worker process died" in captured.err
    # the other run: finished first; or stopped with the broken pool and resumed alone; or
    # finished its directory just before the pool broke, without its result coming back, and
    # is then read back from it
    assert re.search(r"name=ok/seed-0 (ran|resumed|done before)", captured.err), captured.err
    assert "error: " in captured.err and "name=crash" in captured.err
    assert "name=crash" in captured.out and "1 failed" in captured.out  # the summary, marked
