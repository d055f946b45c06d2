"""Divergence that stays finite, Ctrl-C before anything is saved, a full disk: each a clear
message and a known exit code, and the last good chunk kept."""

from __future__ import annotations

import copy
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fipframe import load_config, run
from fipframe.cli import main
from fipframe.errors import TraversalError
from tests.conftest import make_distribution

ROOT = Path(__file__).resolve().parents[2]


def _diverging(tiny, **guard):
    tiny["branches"] = {"fip": tiny["branches"]["fip"]}
    tiny["branches"]["fip"][0]["integrator"]["lr"] = 1e6  # Adam at 1e6: loss ~1e13, finite
    tiny["run"]["guard"] = guard
    return tiny


def test_a_finite_divergence_is_rolled_back_then_refused(tiny, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_diverging(tiny)))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: fip/second: diverged: the chunk's mean loss" in err
    assert "(run.guard.loss_growth 1000)" in err and "after 4 rollbacks" in err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["branch"] for r in records if r["kind"] == "stage_end"] == ["trunk"]
    assert not [r for r in records if r["branch"] == "fip"]  # nothing diverged was recorded


def test_stop_keeps_the_checkpoint_and_a_lower_step_resumes(tiny, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TraversalError, match=r"stopped \(run.guard.action: stop\)"):
        run(load_config(_diverging(copy.deepcopy(tiny), action="stop")), out=out)
    from fipframe import resume

    result = resume(out, overrides=["branches.fip.0.integrator.lr=0.01"])
    assert result.final["fip"]["task_1 (2-3)"] > 0.6  # resumed from the good checkpoint
    [change] = [json.loads(x) for x in (out / "changes.jsonl").read_text().splitlines()]
    assert change["changed"] == {"branches.fip.0.integrator.lr": [1e6, 0.01]}


def test_collapse_to_chance_is_caught_when_switched_on(tiny, tmp_path):
    config = _diverging(tiny, loss_growth=None, collapse=True, action="stop")
    with pytest.raises(TraversalError, match=r"collapsed: mean accuracy over tasks \[0, 1\]"):
        run(load_config(config), out=tmp_path / "run")


def test_the_guard_can_be_switched_off(tiny, tmp_path):
    result = run(load_config(_diverging(tiny, loss_growth=None)), out=tmp_path / "run")
    assert result.final["fip"]["task_0 (0-1)"] < 0.9  # it ran to the end, badly, as asked


STOP_AT_START = """
import fipframe

@fipframe.hookimpl
def fipframe_traversal_start(run):
    raise KeyboardInterrupt
"""


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(
    tiny, tmp_path, monkeypatch, capsys
):
    make_distribution(tmp_path / "site", "stopplug", "stopplug_mod", STOP_AT_START, "stop")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"nothing was saved yet (no checkpoint in {out})" in err


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tiny, tmp_path):
    from tests.reliability.conftest import interrupted

    out = interrupted(tiny, tmp_path / "run", "fip", 10)
    checkpoint = (out / "checkpoint.safetensors").read_bytes()
    proc = subprocess.run(  # the next checkpoint cannot be written: EFBIG, as on a full disk
        [sys.executable, "-m", "fipframe", "run", "--resume", str(out)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        preexec_fn=_limit_file_size(len(checkpoint) - 1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: File too large (" in proc.stderr and str(out) in proc.stderr  # names the file
    assert not list(out.rglob(".*.tmp"))  # the half-written temporary file was removed
    assert (out / "checkpoint.safetensors").read_bytes() == checkpoint
    assert main(["run", "--resume", str(out)]) == 0  # with room again, it resumes
