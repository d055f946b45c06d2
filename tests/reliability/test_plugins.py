"""A plugin cannot break the host: wrong hook signatures, misspelled hooks and unknown names
in the disable list are named, and every command (``--version`` included) keeps working.
Each plugin is a real distribution on disk, discovered through its entry point."""

from __future__ import annotations

import pytest

from fipframe.cli import main
from fipframe.plugins import make_plugin_manager
from tests.conftest import make_distribution

WRONG_SIGNATURE = """
import fipframe

@fipframe.hookimpl
def fipframe_register_metrics(colour):
    return []
"""

MISSPELLED = """
import fipframe

@fipframe.hookimpl
def fipframe_register_metric():
    return []

def fipframe_register_objectives():
    return []
"""

BAD_COMMANDS = """
import fipframe

@fipframe.hookimpl
def fipframe_add_commands(subparsers):
    raise RuntimeError("this plugin's command is broken")
"""


@pytest.fixture
def installed(tmp_path, monkeypatch):
    def install(name: str, source: str) -> None:
        make_distribution(tmp_path, name, f"{name}_mod", source, "plug")
        monkeypatch.syspath_prepend(str(tmp_path))

    return install


def test_wrong_hook_signature_is_a_named_failure_and_commands_work(installed, capsys):
    installed("sigplug", WRONG_SIGNATURE)
    pm = make_plugin_manager()
    [failure] = [f for f in pm.failures if f.dist == "sigplug"]
    assert failure.name == "sigplug:plug" and "colour" in failure.error
    assert "kl" in pm.registry.kinds("metric") and "tempered_kl" in pm.registry.kinds("metric")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert main(["presets"]) == 0
    captured = capsys.readouterr()
    assert "fipframe 0.1.0" in captured.out and "split-mnist" in captured.out
    assert "warning: plugin 'sigplug:plug' from sigplug was not loaded" in captured.err
    assert "FIPFRAME_DISABLE_PLUGINS=" in captured.err  # the switches are named
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "not loaded:" in out and "sigplug:plug" in out and "FIPFRAME_NO_ENTRY_POINTS=1" in out


def test_misspelled_and_unmarked_hooks_are_warnings(installed):
    installed("typoplug", MISSPELLED)
    pm = make_plugin_manager()
    warnings = [w for w in pm.warnings if "typoplug" in w]
    assert len(warnings) == 2, pm.warnings
    assert "hook 'fipframe_register_metric' is not a fipframe hook" in warnings[0]
    assert "did you mean 'fipframe_register_metrics'" in warnings[0]
    assert "fipframe_register_objectives is not marked with @fipframe.hookimpl" in warnings[1]
    assert not [f for f in pm.failures if f.dist == "typoplug"]


def test_a_failing_command_hook_leaves_the_others(installed, capsys):
    installed("cmdplug", BAD_COMMANDS)
    assert main(["presets"]) == 0
    err = capsys.readouterr().err
    assert "plugin 'cmdplug:plug': fipframe_add_commands failed (RuntimeError" in err


def test_disable_list_takes_distribution_names_and_warns_of_unknown(installed, monkeypatch, capsys):
    installed("sigplug", WRONG_SIGNATURE)
    monkeypatch.setenv("FIPFRAME_DISABLE_PLUGINS", "sigplug, fipframe-example, nosuchplug:x")
    pm = make_plugin_manager()
    assert not pm.failures
    assert "tempered_kl" not in pm.registry.kinds("metric")  # the bare dist name disabled it
    [warning] = pm.warnings
    assert "FIPFRAME_DISABLE_PLUGINS: 'nosuchplug:x' matches no installed plugin" in warning
    assert main(["validate", "--preset", "split-mnist"]) == 0
    assert "nosuchplug:x" in capsys.readouterr().err


EXITS = "import sys\nsys.exit(3)\n"

CHECK_RAISES = """
import fipframe

@fipframe.hookimpl
def fipframe_check_config(config, registry):
    raise RuntimeError("checker is broken")
"""

CHECK_STRING = """
import fipframe

@fipframe.hookimpl
def fipframe_check_config(config, registry):
    return "one problem as a plain string"
"""

CHUNK_RAISES = """
import fipframe

@fipframe.hookimpl
def fipframe_chunk_end(run, step, metrics):
    if run.position.branch == "fip":
        raise RuntimeError("dashboard is down")
"""

CHUNK_EXITS = """
import sys
import fipframe

@fipframe.hookimpl
def fipframe_chunk_end(run, step, metrics):
    sys.exit(0)
"""


def test_a_plugin_exiting_at_import_is_a_failure_not_the_exit(installed, capsys):
    installed("exitplug", EXITS)
    pm = make_plugin_manager()
    [failure] = [f for f in pm.failures if f.dist == "exitplug"]
    assert "SystemExit: 3" in failure.error
    assert main(["presets"]) == 0


@pytest.mark.parametrize(
    "source,expected",
    [
        (
            CHECK_RAISES,
            "plugin 'checkplug:plug': fipframe_check_config failed (RuntimeError: checker is "
            "broken",
        ),
        (CHECK_STRING, "c.yaml: one problem as a plain string"),
    ],
)
def test_config_checks_of_a_plugin_fail_cleanly(
    installed, tiny, tmp_path, capsys, source, expected
):
    import yaml

    installed("checkplug" if source is CHECK_RAISES else "stringplug", source)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_a_runtime_hook_that_raises_is_named_and_the_run_resumes(
    installed, tiny, tmp_path, capsys, monkeypatch
):
    import yaml

    installed("chunkplug", CHUNK_RAISES)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert (
        "error: plugin 'chunkplug:plug': fipframe_chunk_end failed (RuntimeError: dashboard is down"
        in err
    )
    assert f"resume with --resume {out}" in err and "FIPFRAME_DISABLE_PLUGINS" in err
    monkeypatch.setenv("FIPFRAME_DISABLE_PLUGINS", "chunkplug")
    assert main(["run", "--resume", str(out)]) == 0


def test_a_runtime_hook_may_not_end_the_process(installed, tiny, tmp_path, capsys):
    import yaml

    installed("exitchunk", CHUNK_EXITS)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 1
    assert (
        "plugin 'exitchunk:plug': fipframe_chunk_end failed (SystemExit: 0"
        in capsys.readouterr().err
    )
