"""Run directories that cannot be corrupted: one writer at a time, checkpoints that belong to
their run, configs that match them, every damaged file named, reports that never credit an
unfinished branch, loggers that never lose rows."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fipframe import load_config, run
from fipframe.cli import main
from fipframe.errors import ConfigError
from fipframe.eval.results import RunResult
from tests.reliability.conftest import interrupted

ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


# -- one writer ---------------------------------------------------------------------------------
SLOW = """
import time
import fipframe

@fipframe.hookimpl
def fipframe_chunk_end(run, step, metrics):
    time.sleep(0.25)
"""


def test_a_second_writer_is_refused_naming_the_holder(small, tmp_path, capsys):
    from tests.conftest import make_distribution

    make_distribution(tmp_path / "slow", "slowplug", "slowplug_mod", SLOW, "slow")
    small["stages"][0]["steps"] = 300  # with the plugin's pauses: about 8 s of running
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(small))
    out = tmp_path / "run"
    env = _cli_env()
    env["PYTHONPATH"] += os.pathsep + str(tmp_path / "slow")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fipframe", "run", str(cfg), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for argv in (["run", str(cfg), "--out", str(out)], ["run", "--resume", str(out)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"in use by pid {proc.pid} on host" in err, err
        (out / ".lock").unlink()  # the lock is on the directory: the note can go, the lock stays
        assert main(["run", "--resume", str(out)]) == 2
        assert "in use by another process" in capsys.readouterr().err
        assert main(["report", str(out)]) == 0  # reading is allowed, writing the plot is not
        assert "plot not written: the run is in use" in capsys.readouterr().out
    finally:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    records = [json.loads(line) for line in _rows(out / "metrics.jsonl")]
    assert [r["seq"] for r in records] == list(range(len(records)))  # no duplicates, no mix
    assert main(["run", "--resume", str(out)]) == 0  # the lock went with the process


def test_stale_temp_files_of_a_killed_writer_are_cleaned(small, tmp_path):
    out = interrupted(small, tmp_path / "run", "fip", 10)
    stale = [out / ".checkpoint.safetensors.k1ll3d.tmp", out / "points" / ".x.safetensors.a.tmp"]
    for p in stale:
        p.write_bytes(b"")
    assert main(["run", "--resume", str(out)]) == 0
    assert not any(p.exists() for p in stale)


# -- checkpoints and configs that belong together -----------------------------------------------
def test_resume_refuses_a_config_edited_by_hand_unless_forced(small, tmp_path, capsys):
    out = interrupted(small, tmp_path / "run", "finetune", 10)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["branches"]["fip"][0]["integrator"]["alpha"] = 1000.0
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = (out / "metrics.jsonl").read_bytes()
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "branches.fip.0.integrator.alpha: 5.0 -> 1000.0 differs from the config" in err
    assert "--set branches.fip.0.integrator.alpha=1000.0" in err and "--force" in err
    assert (out / "metrics.jsonl").read_bytes() == before  # nothing touched
    assert main(["run", "--resume", str(out), "--force"]) == 0
    [change] = [json.loads(line) for line in _rows(out / "changes.jsonl")]
    assert change["forced"] is True
    assert change["changed"] == {"branches.fip.0.integrator.alpha": [5.0, 1000.0]}


def test_an_override_on_resume_is_used_and_recorded(small, tmp_path, capsys):
    out = interrupted(small, tmp_path / "run", "finetune", 10)
    assert main(["run", "--resume", str(out), "--set", "branches.fip.0.integrator.alpha=1000"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["branches"]["fip"][0]["integrator"]["alpha"] == 1000.0
    [change] = [json.loads(line) for line in _rows(out / "changes.jsonl")]
    assert change["overrides"] == ["branches.fip.0.integrator.alpha=1000"]
    assert change["forced"] is False and change["at"]["branch"] == "finetune"
    assert change["changed"] == {"branches.fip.0.integrator.alpha": [5.0, 1000.0]}


@pytest.mark.parametrize(
    "override,expected",
    [
        ("stages.0.integrator.lr=0.5", "trunk/0 finished before the interruption"),
        ("model.hidden=[64]", "the model of a run cannot change on resume"),
        ("run.seed=9", "the run of a run cannot change"),
        (
            "branches.finetune.0.integrator.optimizer.name=sgd",
            "the interrupted stage's saved state belongs to its integrator.optimizer.name",
        ),
        ("branches.finetune.0.steps=5", "the interrupted stage is already at step 10"),
    ],
)
def test_resume_refuses_rewriting_what_ran(small, tmp_path, capsys, override, expected):
    out = interrupted(small, tmp_path / "run", "finetune", 10)
    assert main(["run", "--resume", str(out), "--set", override]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (out / "changes.jsonl").exists()


def test_a_checkpoint_from_another_run_is_refused(small, tmp_path, capsys):
    a = interrupted(small, tmp_path / "a", "fip", 10)
    b = interrupted(small, tmp_path / "b", "fip", 20)
    (a / "checkpoint.safetensors").write_bytes((b / "checkpoint.safetensors").read_bytes())
    assert main(["run", "--resume", str(a)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.safetensors: belongs to run" in err and "never a checkpoint alone" in err


# -- damaged files ------------------------------------------------------------------------------
def _point(out: Path) -> Path:
    return next(p for p in sorted((out / "points").glob("trunk-*-end.safetensors")))


@pytest.mark.parametrize(
    "damage,expected",
    [
        ("truncate-point", "damaged ("),
        ("flip-point", "its contents do not match its sha256"),
        ("flip-checkpoint", "checkpoint.safetensors: damaged (its contents do not match"),
        ("delete-point", ": missing"),
        ("not-an-object", "metrics.jsonl: line 2 damaged (a JSON list, not a record)"),
        ("not-utf8", "metrics.jsonl: line 2 damaged ("),
        ("last-covered", "which the checkpoint covers, is missing"),
        ("last-covered-cut", "metrics.jsonl: line 8 damaged"),
        ("origin", "origin.json: unreadable"),
        ("start-point", "finetune-00-second-start.safetensors: damaged (its contents"),
        ("delivered", "delivered.json: damaged (expected"),
        ("point-field", "metrics.jsonl: line 3 damaged ('point' is not a file inside the run"),
        ("no-point", "damaged (a stage end that names no point)"),
        ("other-point", "is the point of trunk/first step 30, but record seq"),
    ],
)
def test_damage_is_named_and_resume_refuses(small, tmp_path, capsys, damage, expected):
    out = interrupted(small, tmp_path / "run", "fip", 20)
    point = _point(out)
    lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    if damage == "truncate-point":
        point.write_bytes(point.read_bytes()[:-7])
    elif damage in ("flip-point", "flip-checkpoint"):
        target = point if damage == "flip-point" else out / "checkpoint.safetensors"
        blob = bytearray(target.read_bytes())
        blob[-3] ^= 0x10
        target.write_bytes(bytes(blob))
    elif damage == "delete-point":
        point.unlink()
    elif damage == "not-an-object":
        lines[1] = b"[1, 2, 3]\n"
    elif damage == "not-utf8":
        lines[1] = lines[1][:20] + b"\xff\xfe" + lines[1][22:]
    elif damage == "last-covered":
        lines = lines[:-1]  # the stage-end record the checkpoint covers, gone
    elif damage == "last-covered-cut":
        lines = lines[:-1] + [lines[-1][:-15] + b"\n"]  # that record, cut short
    elif damage == "origin":
        (out / "origin.json").write_text("{not json")
    elif damage == "start-point":  # named by no record: found by the sweep over points/
        target = out / "points" / "finetune-00-second-start.safetensors"
        blob = bytearray(target.read_bytes())
        blob[-2] ^= 0x04
        target.write_bytes(bytes(blob))
    elif damage == "delivered":
        (out / "delivered.json").write_text('{"seq": "x"}')
    elif damage in ("no-point", "other-point"):
        i = next(i for i, x in enumerate(lines) if b'"finetune"' in x and b"stage_end" in x)
        record = json.loads(lines[i])
        trunk_end = next(json.loads(x) for x in lines if b'"trunk"' in x and b"stage_end" in x)
        record["point"] = None if damage == "no-point" else trunk_end["point"]
        lines[i] = (json.dumps(record) + "\n").encode()
    elif damage == "point-field":
        record = json.loads(lines[2])
        record["point"] = "../../etc/passwd"
        lines[2] = (json.dumps(record) + "\n").encode()
    if damage in (
        "not-an-object",
        "not-utf8",
        "last-covered",
        "last-covered-cut",
        "point-field",
        "no-point",
        "other-point",
    ):
        (out / "metrics.jsonl").write_bytes(b"".join(lines))
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err
    if damage in ("truncate-point", "flip-point", "delete-point"):
        assert point.name in err  # one line naming the file
    now = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert now == kept  # a refused resume changes nothing


def test_report_and_export_name_damaged_points(small, tmp_path, capsys):
    out = tmp_path / "run"
    run(load_config(copy.deepcopy(small)), out=out)
    point = next((out / "points").glob("fip-*-end.safetensors"))
    blob = bytearray(point.read_bytes())
    blob[-1] ^= 0x01
    point.write_bytes(bytes(blob))
    assert main(["report", str(out)]) == 2
    captured = capsys.readouterr()
    assert "fip" in captured.out  # the table from the records still prints
    assert f"error: {point}: damaged (its contents do not match its sha256" in captured.err
    assert main(["export", str(out), "--branch", "fip"]) == 2
    assert "damaged (its contents do not match its sha256" in capsys.readouterr().err


def test_report_refuses_records_cut_below_the_checkpoint(small, tmp_path, capsys):
    out = tmp_path / "run"
    run(load_config(copy.deepcopy(small)), out=out)
    lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    (out / "metrics.jsonl").write_bytes(b"".join(lines[:-1]))  # the last stage end, gone
    assert main(["report", str(out)]) == 2
    assert "which the checkpoint covers, is missing" in capsys.readouterr().err


def test_a_finished_run_takes_no_changes_even_forced(small, tmp_path, capsys):
    out = tmp_path / "run"
    run(load_config(copy.deepcopy(small)), out=out)
    for override in ("run.seed=9", "branches.finetune.0.steps=5"):
        assert main(["run", "--resume", str(out), "--set", override, "--force"]) == 2
        assert "the run has finished; nothing would run with the change" in capsys.readouterr().err
    assert not (out / "changes.jsonl").exists()
    extra = {**small["branches"]["fip"][0], "name": "third"}
    assert main(["run", "--resume", str(out), "--set", f"branches.more=[{json.dumps(extra)}]"]) == 0
    assert "more" in RunResult.load(out).final  # a new branch extends a finished run


def test_report_and_export_check_every_file_and_the_config(small, tmp_path, capsys):
    out = tmp_path / "run"
    run(load_config(copy.deepcopy(small)), out=out)
    start = out / "points" / "fip-00-second-start.safetensors"
    start.unlink()
    assert main(["export", str(out), "--branch", "fip"]) == 2
    assert f"{start}: missing" in capsys.readouterr().err
    run(load_config(copy.deepcopy(small)), out=tmp_path / "again")
    config = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    config["run"]["seed"] = 4  # edited by hand after the run
    (tmp_path / "again" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["report", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: differs from the config the run was made with (run.seed: 3 -> 4)" in err


def test_a_torn_last_line_is_dropped_with_a_note(small, tmp_path, capsys):
    out = interrupted(small, tmp_path / "run", "fip", 20)
    with (out / "metrics.jsonl").open("ab") as f:
        f.write(b'{"seq": 99, "kind": "chu')  # killed while appending
    assert main(["report", str(out)]) == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    assert main(["run", "--resume", str(out)]) == 0
    records = [json.loads(line) for line in _rows(out / "metrics.jsonl")]
    assert [r["seq"] for r in records] == list(range(len(records)))


def test_a_damaged_summary_does_not_block_the_report(small, tmp_path, capsys):
    out = tmp_path / "run"
    run(load_config(copy.deepcopy(small)), out=out)
    (out / "summary.json").write_text("{")
    assert main(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert "summary.json: damaged" in captured.err and "task_0" in captured.out


# -- honest reports -------------------------------------------------------------------------------
def test_an_unfinished_branch_is_shown_unfinished_never_with_the_trunks_numbers(
    small, tmp_path, capsys
):
    out = interrupted(small, tmp_path / "run", "fip", 20)
    result = RunResult.load(out)
    assert "fip" not in result.final and result.final.keys() == {"finetune"}
    fip = result.unfinished["fip"]
    assert (fip["stage"], fip["step"], fip["steps"]) == ("second", 20, 30)
    last = [r for r in result.records if r["branch"] == "fip"][-1]
    assert fip["accuracy_so_far"]["task_1 (2-3)"] == last["metrics"]["acc/test/task_1"]
    assert result.continual("fip") == {}
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "fip (unfinished: second step 20/30; so far)" in table
    assert re.search(r"^fip +\(unfinished\)$", table, re.M)  # no ACC/BWT from the trunk
    trunk_only = interrupted(small, tmp_path / "run2", "trunk", 20)
    text = RunResult.load(trunk_only).table()
    assert "finetune (not started)" in text and "fip (not started)" in text


# -- loggers never lose rows ----------------------------------------------------------------------
def _raising_plugin(step: int):
    from typing import Literal

    from fipframe import Spec
    from fipframe.core import Logger, PluginConfig
    from fipframe.plugins import hookimpl

    class RaiseConfig(PluginConfig):
        kind: Literal["raise_at"] = "raise_at"

    class RaiseLogger(Logger):
        armed = True

        def __init__(self, config, *, run_dir):
            super().__init__(config)

        def log(self, record):
            if RaiseLogger.armed and record["branch"] == "fip" and record["step"] == step:
                RaiseLogger.armed = False
                raise KeyboardInterrupt  # killed between the commit and the notification

    class Plugin:
        @hookimpl
        def fipframe_register_loggers(self):
            return [Spec("raise_at", RaiseConfig, RaiseLogger, "fails once")]

    return Plugin()


@pytest.mark.parametrize("order", ["csv-first", "csv-second"])
def test_logger_rows_lost_to_a_kill_are_replayed_exactly(small, tmp_path, order):
    from fipframe.plugins import make_plugin_manager

    reference = tmp_path / "reference"
    pm = make_plugin_manager(plugins=[_raising_plugin(-1)])
    small["loggers"] = ["csv", "raise_at"] if order == "csv-first" else ["raise_at", "csv"]
    run(load_config(copy.deepcopy(small), pm=pm), out=reference)
    out = tmp_path / "run"
    pm = make_plugin_manager(plugins=[_raising_plugin(20)])
    with pytest.raises(KeyboardInterrupt):
        run(load_config(copy.deepcopy(small), pm=pm), out=out)
    rows = _rows(out / "metrics.csv")
    fip20 = [r for r in rows if ",fip,second,20," in r]
    assert bool(fip20) == (order == "csv-first")  # the record half-delivered, or not at all
    with (out / "metrics.csv").open("a") as f:
        f.write("200,fip,second,20,acc/te")  # and a row torn by the kill
    pm = make_plugin_manager(plugins=[_raising_plugin(-1)])
    from fipframe import resume

    resume(out, pm=pm)
    assert (out / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()


def test_a_deleted_csv_is_rebuilt_whole_on_resume(small, tmp_path):
    reference = tmp_path / "reference"
    run(load_config(copy.deepcopy(small)), out=reference)
    out = interrupted(small, tmp_path / "run", "fip", 20)
    (out / "metrics.csv").unlink()
    from fipframe import resume

    resume(out)
    assert (out / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()


def test_a_checkpoint_from_before_the_first_record_resumes(tmp_path):
    """Killed after the stage-start commit (it covers no record, seq -1) and perhaps after a
    first record was appended but before its commit: that record is dropped, nothing refused."""
    import torch

    from fipframe.traversal.artifact import RunDir

    rd = RunDir(tmp_path)
    rd.commit({"w": torch.zeros(2)}, {}, {"seq": -1, "branch": "trunk", "stage": 0, "step": 0})
    assert rd.records(upto=-1) == []  # no metrics.jsonl yet
    rd.append_record({"seq": 0, "kind": "chunk", "branch": "trunk", "metrics": {}})
    assert rd.records(upto=-1) == []
    assert "dropped 1 line(s) written after the checkpoint" in rd.notes[-1]
    rd.truncate_records(-1)
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""


def _interrupting_objective(armed: bool):
    """A real objective plugin (task_ce under another name) that, when armed, is Ctrl-C'd in
    its stage's first step: after the stage's start was committed, before it recorded
    anything."""
    from typing import Literal

    from fipframe import Spec
    from fipframe.builtin.objectives import TaskCE, TaskCEConfig
    from fipframe.plugins import hookimpl

    class StopConfig(TaskCEConfig):
        kind: Literal["stop_first"] = "stop_first"  # type: ignore[assignment]

    class Stop(TaskCE):
        ready = armed

        def sample(self, step):
            if Stop.ready:
                Stop.ready = False
                raise KeyboardInterrupt
            return super().sample(step)

    class Plugin:
        @hookimpl
        def fipframe_register_objectives(self):
            return [Spec("stop_first", StopConfig, Stop, "interrupts")]

    return Plugin()


@pytest.mark.parametrize("where", ["trunk", "fip"])
def test_interrupted_before_a_stages_first_record_resumes(small, tmp_path, where):
    from fipframe import resume
    from fipframe.plugins import make_plugin_manager

    config = copy.deepcopy(small)
    stage = config["stages"][0] if where == "trunk" else config["branches"]["fip"][0]
    stage["objectives"] = ["stop_first"]
    reference = tmp_path / "reference"
    pm = make_plugin_manager(plugins=[_interrupting_objective(armed=False)])
    run(load_config(copy.deepcopy(config), pm=pm), out=reference)
    out = tmp_path / "run"
    pm = make_plugin_manager(plugins=[_interrupting_objective(armed=True)])
    with pytest.raises(KeyboardInterrupt):
        run(load_config(copy.deepcopy(config), pm=pm), out=out)
    if where == "trunk":  # the very first commit covers no record (seq -1)
        assert not (out / "metrics.jsonl").exists() and (out / "checkpoint.safetensors").exists()
        with pytest.raises(ConfigError, match="already holds a run"):  # not overwritten
            run(load_config(copy.deepcopy(config), pm=pm), out=out)
    else:  # fip's start was committed, nothing of it recorded
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["branch"] == "finetune"
    pm = make_plugin_manager(plugins=[_interrupting_objective(armed=False)])
    result = resume(out, pm=pm)
    assert result.final == RunResult.load(reference).final


def test_a_checkpoint_from_before_new_fields_resumes_but_real_changes_are_still_named(
    tiny, tmp_path
):
    """A config dumped by an older fipframe lacks fields added since (here the penalty's
    ``reduction`` and the natural step's ``cg_tol``): those are not changes. A changed value
    still is."""
    from fipframe.errors import RunDirError
    from fipframe.traversal import integrity
    from fipframe.traversal.artifact import RunDir

    tiny["branches"]["natural"] = [
        dict(tiny["branches"]["fip"][0], integrator={"kind": "natural", "eps": 0.05}, metric="kl")
    ]
    config = load_config(tiny)
    old = config.dump()
    del old["branches"]["fip"][0]["integrator"]["reduction"]
    del old["branches"]["natural"][0]["integrator"]["cg_tol"]
    meta = {"config": old, "config_digest": integrity.digest(old), "branch": "trunk"}
    meta |= {"stage": 0, "step": 10, "done": False}
    rd = RunDir(tmp_path)
    assert integrity.check(rd, config, meta) == []
    changed = copy.deepcopy(old)
    changed["branches"]["fip"][0]["integrator"]["alpha"] = 7.0
    meta_changed = dict(meta, config=changed, config_digest=integrity.digest(changed))
    with pytest.raises(RunDirError, match=r"branches\.fip\.0\.integrator\.alpha: 7\.0 -> 5\.0"):
        integrity.check(rd, config, meta_changed)
