from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from fipframe.cli import main


def write(tmp_path, config, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_validate_ok_and_errors(tiny, tmp_path, capsys):
    assert main(["validate", str(write(tmp_path, tiny))]) == 0
    assert "ok: tiny (3 stages, 2 branches)" in capsys.readouterr().out
    tiny["branches"]["fip"][0]["metric"] = "kll"
    tiny["stages"][0]["steps"] = -3
    assert main(["validate", str(write(tmp_path, tiny))]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert any("unknown metric kind 'kll'" in line and "did you mean 'kl'" in line for line in err)


def test_missing_file_unwritable_out_and_bad_usage(tmp_path, tiny, capsys):
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    blocker = tmp_path / "f"
    blocker.write_text("")
    assert main(["run", str(write(tmp_path, tiny)), "--out", str(blocker / "x")]) == 2
    assert "error: out: cannot write to" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "give a config file or --preset" in capsys.readouterr().err


def test_plugins_schema_presets(capsys, tmp_path):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "tempered_kl" in out and "fipframe-example 0.1.0" in out and "metric:" in out
    assert main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    schema = json.loads((tmp_path / "s.json").read_text())
    assert schema["title"] == "RunConfig"
    assert main(["presets"]) == 0
    assert "split-mnist" in capsys.readouterr().out


def test_run_then_report(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(write(tmp_path, tiny)),
                "--out",
                str(out),
                "--set",
                "branches.fip.0.steps=20",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "finetune" in printed and "fip" in printed
    (out / "accuracy.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "accuracy.png").stat().st_size > 10_000
    assert main(["report", str(tmp_path)]) == 2


def run_cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "fipframe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_subprocess_config_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    proc = run_cli("validate", str(bad))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in err
    assert err.startswith(f"error: {bad}: malformed YAML at line")


@pytest.mark.slow
def test_ctrl_c_then_resume(tiny, tmp_path):
    """A real SIGINT to a running `fipframe run`, then `fipframe run --resume`."""
    for stage in [tiny["stages"][0], *[b[0] for b in tiny["branches"].values()]]:
        stage["steps"] = 400
    out = tmp_path / "run"
    proc = run_cli(
        "run",
        str(write(tmp_path, tiny)),
        "--out",
        str(out),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text()) > 2000:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"fipframe run --resume {out}" in err
    resumed = run_cli("run", "--resume", str(out))
    stdout, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "fip" in stdout


def test_plugin_adds_a_command(tmp_path, monkeypatch, capsys):
    from tests.conftest import make_distribution

    source = """
import fipframe

def hello(args):
    print("hello from a plugin; metrics:", ",".join(args.pm.registry.kinds("metric")))
    return 3

@fipframe.hookimpl
def fipframe_add_commands(subparsers):
    subparsers.add_parser("hello", help="say hello").set_defaults(func=hello)
"""
    make_distribution(tmp_path, "helloplug", "helloplug_mod", source, "hello")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["hello"]) == 3
    assert "hello from a plugin; metrics: bhattacharyya,kl,l2" in capsys.readouterr().out
