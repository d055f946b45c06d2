"""The Python entry points: load a config, build a traversal, run it.

Each call without ``pm`` makes a fresh plugin manager (there is no global one); pass the
``(pm, registry)`` pair from :func:`fipframe.plugins.load` to reuse one.
"""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fipframe import plugins
from fipframe.config import RunBase, apply_overrides, read_file, validate
from fipframe.configfile import DEFAULTS_KEY, Limits, check_tree, expand_templates, unshare
from fipframe.errors import ConfigError
from fipframe.eval.results import RunResult
from fipframe.traversal.engine import Traversal

# read as files of the fipframe package: importing the subpackage ``fipframe.presets`` would
# put it in place of the function ``fipframe.presets`` on the package
PRESET_DIR = ("fipframe", "presets")


def _preset_files(pm: plugins.FipPluginManager | None = None) -> dict[str, Path]:
    """Every preset file by name: the shipped ones, then each plugin's directories."""
    files: dict[str, Path] = {}
    for entry in importlib.resources.files(PRESET_DIR[0]).joinpath(PRESET_DIR[1]).iterdir():
        if entry.name.endswith(".yaml"):
            files[entry.name[:-5]] = Path(str(entry))
    if pm is None:
        pm = plugins.make_plugin_manager()
    for dirs in plugins.call_hook(pm, "fipframe_register_presets", ConfigError):
        if isinstance(dirs, (str, Path)) or not all(isinstance(d, (str, Path)) for d in dirs):
            raise ConfigError(
                f"fipframe_register_presets must return a list of directories, got {dirs!r}"
            )
        for d in dirs:
            for entry in sorted(Path(d).glob("*.yaml")):
                name = entry.name[:-5]
                if name in files and files[name] != entry:
                    raise ConfigError(
                        f"preset {name!r} of {entry} has the name of {files[name]}; rename one"
                    )
                files[name] = entry
    return dict(sorted(files.items()))


def presets(pm: plugins.FipPluginManager | None = None) -> dict[str, str]:
    """Names of the shipped and plugin presets and their first comment line."""
    out = {}
    for name, path in _preset_files(pm).items():
        lines = path.read_text().splitlines()
        out[name] = lines[0].lstrip("# ").strip() if lines else ""
    return out


def preset_path(name: str, pm: plugins.FipPluginManager | None = None) -> Path:
    files = _preset_files(pm)
    if name not in files:
        from fipframe.registry import did_you_mean

        known = list(files)
        raise ConfigError(
            f"preset: unknown preset {name!r}; presets: {', '.join(known)}"
            + did_you_mean(name, known)
        )
    return files[name]


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    overrides: Iterable[str] = (),
    pm: plugins.FipPluginManager | None = None,
) -> RunBase:
    """Load and validate a config from a YAML/JSON file, a mapping or a preset name."""
    if (source is None) == (preset is None):
        raise ConfigError("give either a config source or a preset name")
    if pm is None:
        pm = plugins.make_plugin_manager()
    registry = pm.registry
    label = None
    if preset is not None:
        source = preset_path(preset, pm)
    if isinstance(source, (str, Path)):
        label = str(source)
        data = read_file(source)
    else:
        data = copy.deepcopy(dict(source))  # type: ignore[arg-type]  (the caller's stays as it is)
    overrides = list(overrides)
    early = [o for o in overrides if o.startswith(f"{DEFAULTS_KEY}.")]  # before the expansion
    late = [o for o in overrides if o not in early]
    data = unshare(data)  # a YAML alias is a copy: an override changes one place only
    data = apply_overrides(expand_templates(apply_overrides(data, early)), late)
    check_tree(data, Limits.from_env(), label or "config")
    return validate(data, registry, pm, source=label)


def build(
    config: RunBase | str | Path | Mapping[str, Any],
    *,
    out: str | Path | None = None,
    model: Any = None,
    data: Any = None,
) -> Traversal:
    """Build a traversal from a config (validated first if it is a mapping or a file).

    Args:
        model: your own ``torch.nn.Module`` (or a :class:`fipframe.ArchitectureAdapter` that
            says which parameters move, which are frozen and how to prune it) instead of the
            config's ``model:``, which may then be left out.
        data: your own tasks instead of the config's ``data:``: a ``TaskSequence``, a list of
            per-task tensors ``(x_train, y_train, x_test, y_test[, x_val, y_val])`` or a list of
            per-task torch Datasets (see :func:`fipframe.data.user.task_sequence`).
    """
    if not isinstance(config, RunBase):
        config = load_config(config)
    cls = type(config)
    pm = cls.plugin_manager or plugins.make_plugin_manager()
    return Traversal(config, pm=pm, registry=cls.registry, out=out, model=model, data=data)


def run(
    config: RunBase | str | Path | Mapping[str, Any],
    *,
    out: str | Path | None = None,
    resume: bool = False,
    model: Any = None,
    data: Any = None,
    force: bool = False,
    overrides: Iterable[str] = (),
) -> RunResult:
    """Build and run a traversal; with ``resume=True`` continue the run in ``out``.

    On resume the config must be the checkpoint's, but for the fields named in ``overrides``
    (``PATH=VALUE`` strings, already applied to ``config``) or, with ``force=True``, any
    change that does not contradict the interrupted stage's saved state."""
    traversal = build(config, out=out, model=model, data=data)
    return traversal.run(resume=resume, force=force, overrides=overrides)


def resume(
    run_dir: str | Path,
    *,
    model: Any = None,
    data: Any = None,
    overrides: Iterable[str] = (),
    force: bool = False,
    pm: plugins.FipPluginManager | None = None,
) -> RunResult:
    """Continue an interrupted run from its last checkpoint, with its saved config.

    A run whose model or data was passed from Python needs the same ``model=`` / ``data=``
    again (a fresh instance of the module: its weights come from the checkpoint).
    ``overrides`` change fields of the stages still to run (recorded in ``config.yaml`` and
    ``changes.jsonl``); ``force`` accepts a config.yaml edited by hand, or changes to what
    already ran, recording them as forced.
    """
    overrides = list(overrides)
    traversal = resumable(run_dir, model=model, data=data, overrides=overrides, pm=pm)
    return traversal.run(resume=True, force=force, overrides=overrides)


def resumable(
    run_dir: str | Path,
    *,
    model: Any = None,
    data: Any = None,
    overrides: Iterable[str] = (),
    pm: plugins.FipPluginManager | None = None,
) -> Traversal:
    """The traversal that continues ``run_dir`` (its config.yaml with ``overrides``); pass
    the same ``overrides`` to its ``run`` or ``walk`` with ``resume=True``."""
    from fipframe.traversal import origin

    root = Path(run_dir)
    if not (root / "config.yaml").is_file():
        raise ConfigError(f"{root}: not a run directory (no config.yaml)")
    origin.require(root, origin.read(root), model, data, "resume")
    config = load_config(root / "config.yaml", overrides=list(overrides), pm=pm)
    return build(config, out=root, model=model, data=data)


def run_lockstep(
    configs: Sequence[RunBase | str | Path | Mapping[str, Any]],
    *,
    outs: Sequence[str | Path | None] | None = None,
    say: Callable[[str], None] | None = None,
) -> list[RunResult]:
    """Run several configs in this process as lockstep paths: the steps of runs with the same
    model config and batch shapes are stacked (``torch.func.vmap`` over a path axis) into one
    forward and backward. Each run is the one ``run(config, out=out)`` walks, to float
    tolerance, with its own run directory. Steps that cannot be stacked are computed alone
    and ``say`` (default: standard error) tells why, once per stage.

    A run directory that holds the run of its config already is continued from its
    checkpoint (or read back if it finished), so the same call continues after an
    interruption. When runs fail, the others still finish; then the error of the first failed
    run (in the order given) is raised.
    """
    from fipframe.sweep import open_run
    from fipframe.traversal import lockstep

    outs = list(outs) if outs is not None else [None] * len(configs)
    if len(outs) != len(configs):
        raise ConfigError(f"outs: {len(outs)} run directories for {len(configs)} configs")
    kwargs = {} if say is None else {"say": say}
    done: dict[int, RunResult] = {}
    walks, which = [], []
    for i, (c, o) in enumerate(zip(configs, outs, strict=True)):
        notes = lockstep.Notes(label=str(o or f"run {i}"), **kwargs)
        if o is None:
            walks.append(build(c).walk(notes=notes))
        else:
            _, walk = open_run(Path(o), c if isinstance(c, RunBase) else load_config(c))
            if walk is None:
                done[i] = RunResult.load(o)
                continue
            walks.append(walk(notes))
        which.append(i)
    outcomes = lockstep.run_together(walks, **kwargs)
    for outcome in outcomes:
        if outcome.error is not None:
            raise outcome.error
    done.update({i: o.value for i, o in zip(which, outcomes, strict=True)})
    return [done[i] for i in range(len(configs))]
