"""``fipframe run | validate | schema | plugins | presets | report | export``.

Configuration problems, damaged or busy run directories print one line each and exit with 2,
without a traceback; a traversal that cannot go on (divergence, non-finite values) and a file
system error (a full disk) exit with 1. Ctrl-C during a run exits with 130 and prints how to
resume (or that nothing was saved yet). A reader that closes the pipe early
(``fipframe schema | head``) ends the command quietly with 141, as a shell reports a writer
killed by SIGPIPE. ``fipframe --help`` and ``fipframe CMD --help`` are answered without loading
plugins (they import torch), in well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fipframe.errors import ConfigError, FipframeError, PluginError, RunDirError, TraversalError

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
OVERRIDE = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*=")  # run.seed=1, stages.0.steps=5


def _split(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The config file and the overrides: ``--set`` ones, then positional ``key=value`` ones
    (Hydra's style; a file whose name has ``=`` in it is given as ``./name``)."""
    files = [a for a in args.config if not OVERRIDE.match(a)]
    overrides = [*(args.set or ()), *(a for a in args.config if OVERRIDE.match(a))]
    if len(files) > 1:
        raise ConfigError(
            f"give one config file, got {len(files)}: {', '.join(files)} (overrides are key=value)"
        )
    return (files[0] if files else None), overrides


def _load(args: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    from fipframe.api import load_config

    source, overrides = _split(args)
    if source and args.preset:
        raise ConfigError("give a config file or --preset, not both")
    if not source and not args.preset:
        raise ConfigError("give a config file or --preset NAME (see `fipframe presets`)")
    return load_config(source, preset=args.preset, overrides=[*overrides, *extra], pm=args.pm)


def _interrupted(out: Path) -> int:
    from fipframe.traversal.artifact import CHECKPOINT

    if (out / CHECKPOINT).exists():
        said = f"the last chunk is saved. Resume with: fipframe run --resume {out}"
    else:
        said = f"nothing was saved yet (no checkpoint in {out}); run it again"
    print(f"\ninterrupted; {said}", file=sys.stderr)
    return EXIT_INTERRUPTED


def cmd_run(args: argparse.Namespace) -> int:
    from fipframe.api import resume, run

    if args.force and not args.resume:
        raise ConfigError("--force applies to --resume only")
    if args.nproc is not None:
        return _launch(args)
    if args.seeds is not None:
        return _run_seeds(args)
    if args.baseline:
        raise ConfigError("--baseline goes with --seeds (or `fipframe report RUN RUN ...`)")
    if args.lockstep:
        raise ConfigError("--lockstep goes with --seeds (the runs to walk together)")
    if args.resume:
        source, overrides = _split(args)
        if source or args.preset:
            raise ConfigError("--resume takes the run directory only; its config.yaml is used")
        out: Path = Path(args.resume)
    else:
        config = _load(args)
        out = Path(args.out) if args.out else Path("runs") / config.name
    try:
        if args.resume:
            result = resume(out, overrides=overrides, force=args.force, pm=args.pm)
        else:
            result = run(config, out=out)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) != 0:
            return EXIT_INTERRUPTED  # rank 0 says what was saved
        return _interrupted(out)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 prints the results of a data-parallel run
    print(result.table())
    print(f"\nrun directory: {out}  (plot: {out / 'accuracy.png'})")
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: the same command under torchrun, N data-parallel processes on this host."""
    n = args.nproc
    if n < 1:
        raise ConfigError(f"--nproc: {n} processes; give 1 or more")
    if "WORLD_SIZE" in os.environ:
        raise ConfigError("--nproc: already under torchrun (WORLD_SIZE is set); drop --nproc")
    if args.seeds is not None:
        raise ConfigError(
            "--nproc with --seeds: runs of several seeds are independent; use `fipframe sweep` "
            "to run them side by side, or --nproc for each run"
        )
    if args.resume:  # the processes would each say so; say it once, before starting them
        out = Path(args.resume)
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{args.resume}: not a run directory (no config.yaml)")
    else:
        config = _load(args)  # a bad config is reported once, before any process starts
        out = Path(args.out) if args.out else Path("runs") / config.name
    rest, skip = [], False
    for a in args.argv:  # argparse also took unambiguous abbreviations (--npr 2)
        flag = a.split("=", 1)[0]
        if skip:
            skip = False
        elif len(flag) >= 4 and "--nproc".startswith(flag):
            skip = "=" not in a
        else:
            rest.append(a)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    from fipframe.traversal.artifact import CHECKPOINT

    # torchrun gives each process one thread unless told; on CPU share the cores out instead
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (cores or 1) // n)))
    line = ["--standalone", f"--nproc-per-node={n}", "-m", "fipframe", *rest]
    print(
        f"launching {n} processes ({threads} threads each): torchrun {' '.join(line)}",
        file=sys.stderr,
    )
    try:
        torchrun(parse_args(line))
    except (KeyboardInterrupt, SignalException):  # the processes heard it too
        return _interrupted(out)
    except ChildFailedError as exc:  # the processes printed their errors; summarise once
        failed = sorted(exc.failures.items(), key=lambda kv: kv[1].timestamp)
        said = ", ".join(f"rank {rank} (exit code {f.exitcode})" for rank, f in failed)
        saved = (
            f"the last committed chunk is in {out}: fix the cause and continue with "
            f"`fipframe run --resume {out} --nproc {n}`"
            if (out / CHECKPOINT).exists()
            else f"nothing was committed in {out}"
        )
        print(f"error: {len(failed)} of {n} processes stopped: {said}; {saved}", file=sys.stderr)
        code = failed[0][1].exitcode
        return code if code > 0 else 1
    return 0


def _run_seeds(args: argparse.Namespace) -> int:
    """One run per seed in ``OUT/seed-<s>``, then the comparison over them. Run again, the
    same command continues: finished seeds are read, interrupted ones resumed."""

    if args.resume:
        raise ConfigError("--seeds starts or continues its runs itself; drop --resume")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds: {args.seeds} repeats a seed")
    first = _load(args)
    root = Path(args.out) if args.out else Path("runs") / first.name
    from fipframe.sweep import continue_run

    if args.lockstep:
        return _run_lockstep(args, root)
    dirs = []
    for i, seed in enumerate(args.seeds):
        out = root / f"seed-{seed}"
        print(f"== seed {seed} ({i + 1} of {len(args.seeds)}): {out}", file=sys.stderr)
        try:
            status = continue_run(out, _load(args, [f"run.seed={seed}"]))
        except KeyboardInterrupt:
            print(
                f"\ninterrupted at seed {seed}; run the same command again to continue",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if status == "done before":
            print(f"   finished before: read back from {out}", file=sys.stderr)
        dirs.append(out)
    return _compare(dirs, root / "comparison", args.baseline)


def _run_lockstep(args: argparse.Namespace, root: Path) -> int:
    """``--seeds ... --lockstep``: the seeds' runs walked together, then compared."""
    from fipframe.api import run_lockstep

    dirs = [root / f"seed-{seed}" for seed in args.seeds]
    print(f"== seeds {' '.join(map(str, args.seeds))} in lockstep: {root}", file=sys.stderr)
    try:
        run_lockstep([_load(args, [f"run.seed={seed}"]) for seed in args.seeds], outs=dirs)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    return _compare(dirs, root / "comparison", args.baseline)


def _compare(dirs: Sequence[Path], stem: Path, baseline: str | None) -> int:
    from fipframe.eval.compare import Comparison

    comparison = Comparison.load(dirs)
    text = comparison.table(baseline)
    print(text)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".txt").write_text(text + "\n")
    plot = comparison.plot(stem.with_suffix(".png"))
    print(f"\ncomparison: {stem.with_suffix('.txt')}  (plot: {plot}, {plot.with_suffix('.svg')})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fipframe import sweep as S

    source, overrides = _split(args)
    if source and args.preset:
        raise ConfigError("give a config file or --preset, not both")
    if not source and not args.preset:
        raise ConfigError("give a config file or --preset NAME (see `fipframe presets`)")
    first = _load(args)
    root = Path(args.out) if args.out else Path("runs") / f"{first.name}-sweep"
    todo = S.prepare(
        list(args.grid or ()), overrides, list(args.seeds), root, lambda extra: _load(args, extra)
    )
    threads = args.threads
    if threads is None:  # share the cores among the workers
        threads = max(1, (os.cpu_count() or 1) // args.workers) if args.backend == "local" else 1
    how = (
        f"{args.workers} workers x {threads} threads"
        + (f", {args.lockstep} lockstep runs per worker" if args.lockstep > 1 else "")
        if args.backend == "local"
        else f"{threads} thread(s) and {args.gpus_per_run:g} GPU(s) per Ray task"
    )
    cells = len({j.cell.name for j in todo})
    print(
        f"sweep {root}: {cells} cells x {len(args.seeds)} seeds = {len(todo)} runs, "
        f"{args.backend} backend, {how}",
        file=sys.stderr,
    )
    try:
        outcomes = S.execute(
            todo, backend=args.backend, workers=args.workers, threads=threads,
            gpus=args.gpus_per_run, ray_address=args.ray_address, lockstep=args.lockstep,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to continue the sweep", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [o for o in outcomes if o["status"] == "failed"]
    for o in failed:  # first: a summary that cannot be read must not hide them
        print(f"error: {o['out']}: {o['error']}", file=sys.stderr)
    text = S.summary(root, [o["out"] for o in failed])
    print(text)
    (root / "summary.txt").write_text(text + "\n")
    return 1 if failed else 0


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    stages = sum(len(s) for _, s in config.all_stages())
    what = f"{config.name} ({stages} stages, {len(config.branches)} branches)"
    if args.deep:
        from fipframe.traversal.build import build_components

        comp = build_components(config, pm=args.pm, registry=type(config).registry)
        sizes = ", ".join(f"{t.name}: {len(t.train)}" for t in comp.tasks.tasks)
        n = sum(p.numel() for p in comp.adapter.model.parameters())
        what += f"; data and model built: {n:,} parameters, training examples {sizes}"
    print(f"ok: {what}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from fipframe.config import config_model, markdown_reference

    if args.markdown:
        text = markdown_reference(args.pm.registry)
    else:
        text = json.dumps(config_model(args.pm.registry, args.pm).model_json_schema(), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from fipframe.plugins import SWITCHES
    from fipframe.registry import FAMILIES

    registry = args.pm.registry
    for family in FAMILIES:
        print(f"{family}:")
        for entry in registry.entries(family):
            dist = f"{entry.dist} {entry.version}" if entry.dist else "in-process"
            print(f"  {entry.spec.kind:<16} {entry.spec.summary}  [{entry.plugin}; {dist}]")
    if args.pm.failures:
        print("not loaded:")
        for failure in args.pm.failures:
            print(f"  {failure}")
    if args.pm.warnings:
        print("warnings:")
        for warning in args.pm.warnings:
            print(f"  {warning}")
    if args.pm.failures or args.pm.warnings:
        print(f"({SWITCHES})")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from fipframe.api import preset_path, presets

    if args.action is None:
        for name, summary in presets(args.pm).items():
            print(f"{name:<24} {summary}")
        return 0
    if args.action != "show" or not args.name:
        raise ConfigError("presets: use `fipframe presets` or `fipframe presets show NAME`")
    if args.resolved:
        import yaml

        from fipframe.api import load_config

        config = load_config(preset=args.name, pm=args.pm)
        print(yaml.safe_dump(config.dump(), sort_keys=False), end="")
    else:
        print(preset_path(args.name, args.pm).read_text(), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if len(args.run_dir) > 1:
        dirs = [Path(d) for d in args.run_dir]
        stem = Path(args.out) if args.out else _common_parent(dirs) / "comparison"
        return _compare(dirs, stem.with_suffix(""), args.baseline)
    if args.out or args.baseline:
        raise ConfigError("report: --out and --baseline compare several runs; give two or more")
    from fipframe.sweep import SWEEP_FILE, summary

    if (Path(args.run_dir[0]) / SWEEP_FILE).is_file():
        print(summary(Path(args.run_dir[0])))
        return 0
    return _report_one(args.run_dir[0])


def _common_parent(dirs: Sequence[Path]) -> Path:
    import os

    return Path(os.path.commonpath([str(d.resolve().parent) for d in dirs]))


def _report_one(run_dir: str) -> int:
    from fipframe.eval.results import RunResult
    from fipframe.traversal.artifact import RunDir

    result = RunResult.load(run_dir)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.table())
    rd = RunDir(run_dir)
    live = rd.busy()
    if live:  # another process is writing the run: read, but do not write into it
        print("\nplot not written: the run is in use (see its .lock); report it when it ends")
    else:
        out = result.plot(Path(run_dir) / "accuracy.png")
        print(f"\nplot: {out}")
    problems = rd.audit(result.records, None, live=live)
    if result.checkpoint is not None:
        from fipframe.traversal import integrity

        problems += integrity.file_matches(rd, result.checkpoint)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_CONFIG if problems else 0


def cmd_export(args: argparse.Namespace) -> int:
    from fipframe.traversal.export import export

    out = Path(args.out) if args.out else Path(args.run_dir) / "export"
    report = export(
        args.run_dir,
        out,
        branch=args.branch,
        stage=args.stage,
        structured=args.structured,
        pm=args.pm,
    )
    acc = report["test_accuracy"]
    print(
        f"{report['branch']}/{report['stage']}: {report['params_nonzero']:,} of "
        f"{report['params_total']:,} parameters nonzero; masked tensors "
        f"{100 * report['masked_sparsity']:.2f}% zero"
        + (f"; test accuracy {100 * acc:.2f}%" if acc is not None else "")
    )
    if "structured" in report:
        st = report["structured"]
        print(
            f"structured: {st['params_total']:,} parameters after removing pruned units; "
            f"forward {st['forward_ms_masked']:.2f} -> {st['forward_ms_structured']:.2f} ms "
            f"per batch; max output difference {st['max_output_difference']:.2e}"
        )
    print(f"written to {out}")
    return 0


COMMANDS = ("run", "sweep", "validate", "schema", "plugins", "presets", "report", "export")
EPILOG = """examples:
  fipframe run --preset split-mnist                     the demo
  fipframe run my.yaml run.seed=1 stages.0.steps=200    overrides as key=value
  fipframe run my.yaml --seeds 0 1 2                    one run per seed, then mean +- std
  fipframe sweep my.yaml --seeds 0 1 --grid a.b=1,10    a grid x seeds, in parallel
  fipframe run --resume runs/my                         continue after Ctrl-C or a crash
  fipframe validate my.yaml --deep                      also build the data and the model
  fipframe report runs/a runs/b                         tables and one plot across runs
  fipframe presets show split-mnist                     a shipped config

Plugins may add commands: `fipframe plugins` lists what is installed."""

EXAMPLES = {
    "run": [
        "fipframe run --preset split-mnist --out runs/demo",
        "fipframe run my.yaml run.seed=1 branches.fip.0.metric=kl   # overrides",
        "fipframe run my.yaml --seeds 0 1 2 --baseline finetune      # mean ± std",
        "fipframe run my.yaml --seeds 0 1 2 --lockstep              # the seeds stacked (GPU)",
        "fipframe run --resume runs/demo                             # after Ctrl-C",
        "fipframe run --resume runs/demo branches.fip.0.integrator.lr=1e-4",
    ],
    "sweep": [
        "fipframe sweep my.yaml --seeds 0 1 2 --grid branches.fip.0.integrator.alpha=1,10,100",
        "fipframe sweep --preset split-mnist --seeds 0 1 --workers 2 --threads 1",
        "fipframe sweep my.yaml --seeds 0 1 --grid run.chunk=25,50 --backend ray --gpus-per-run 1",
        "fipframe sweep my.yaml --seeds 0 1 2 3 --lockstep 4 --workers 1  # 4 seeds stacked (GPU)",
        "fipframe report runs/my-sweep                                 # the summary again",
    ],
    "validate": [
        "fipframe validate my.yaml",
        "fipframe validate --preset continual-split-mnist --deep    # builds data and model",
    ],
    "schema": ["fipframe schema --out schema.json", "fipframe schema --markdown | less"],
    "plugins": ["fipframe plugins", "FIPFRAME_NO_ENTRY_POINTS=1 fipframe plugins   # built-ins"],
    "presets": [
        "fipframe presets",
        "fipframe presets show continual-split-mnist",
        "fipframe presets show continual-split-mnist --resolved > mine.yaml",
    ],
    "report": [
        "fipframe report runs/demo",
        "fipframe report runs/demo/seed-0 runs/demo/seed-1 runs/demo/seed-2 --baseline finetune",
    ],
    "export": [
        "fipframe export runs/sparse --branch fip",
        "fipframe export runs/sparse --branch fip --structured --out sparse-net",
    ],
}


def parser(pm: Any = None) -> argparse.ArgumentParser:
    """The command line; with ``pm`` None plugin commands are left out (help without loading
    plugins, which import torch)."""
    top = argparse.ArgumentParser(
        prog="fipframe",
        description="functionally invariant paths",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from fipframe import __version__

    top.add_argument("--version", action="version", version=f"fipframe {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        lines = "\n".join(f"  {line}" for line in EXAMPLES[name])
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"examples:\n{lines}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "config",
            nargs="*",
            metavar="CONFIG|KEY=VALUE",
            help="a YAML or JSON config file, and overrides as key=value (like --set)",
        )
        p.add_argument("--preset", help="a shipped preset (see `fipframe presets`)")
        p.add_argument(
            "--set",
            action="append",
            metavar="PATH=VALUE",
            help="override a field, e.g. --set stages.0.steps=200 (repeatable)",
        )

    p = command("run", "run a traversal")
    config_args(p)
    p.add_argument("--out", help="run directory (default runs/<name>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --resume: accept a config.yaml edited by hand or changes to finished stages "
        "(recorded as forced in changes.jsonl)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        help="one run per seed in OUT/seed-<s>, then mean ± std over them (OUT/comparison.*)",
    )
    p.add_argument("--baseline", help="with --seeds: the branch others are judged against")
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="with --seeds: walk the seeds together in this process, their steps stacked with "
        "vmap (lockstep paths; pays on a GPU)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="walk the path with N data-parallel processes on this host (torchrun; each takes "
        "1/N of every batch; gloo on CPU, NCCL on CUDA)",
    )
    p.set_defaults(func=cmd_run)
    p = command("sweep", "a config over seeds and a grid of overrides, runs in parallel")
    config_args(p)
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED")
    p.add_argument(
        "--grid",
        action="append",
        metavar="PATH=V1,V2",
        help="an axis of the grid (repeatable; the product of the axes is swept)",
    )
    p.add_argument("--out", help="sweep directory (default runs/<name>-sweep)")
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, default=2, help="runs at once (local backend)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / workers)")
    p.add_argument("--ray-address", help="a Ray cluster (default: RAY_ADDRESS, or local)")
    p.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        help="Ray: GPUs each run (each group of --lockstep runs) asks for (Ray then gives each "
        "its own); the local backend puts every run on the config's run.device",
    )
    p.add_argument(
        "--lockstep",
        type=int,
        default=1,
        metavar="K",
        help="each worker walks K consecutive runs (the seeds of a cell) as lockstep paths: "
        "their steps stacked with vmap into one forward and backward (pays on a GPU)",
    )
    p.set_defaults(func=cmd_sweep)
    p = command("validate", "validate a config against the installed plugins")
    config_args(p)
    p.add_argument(
        "--deep", action="store_true", help="also build the data and the model (no training)"
    )
    p.set_defaults(func=cmd_validate)
    p = command("schema", "print the JSON schema of configs (installed plugins)")
    p.add_argument("--out", help="write to a file instead of stdout")
    p.add_argument("--markdown", action="store_true", help="a readable reference of every kind")
    p.set_defaults(func=cmd_schema)
    command("plugins", "list kinds per family and where they come from").set_defaults(
        func=cmd_plugins
    )
    p = command("presets", "list shipped and plugin presets, or show one")
    p.add_argument("action", nargs="?", choices=["show"], help="show NAME: print the preset")
    p.add_argument("name", nargs="?", help="the preset to show")
    p.add_argument(
        "--resolved", action="store_true", help="with show: the validated config, every default"
    )
    p.set_defaults(func=cmd_presets)
    p = command("report", "table and plot of a run directory; mean ± std across several")
    p.add_argument("run_dir", nargs="+", help="one run directory, or several to compare")
    p.add_argument("--baseline", help="several runs: the branch others are judged against")
    p.add_argument("--out", help="several runs: where comparison.txt/png/svg go (a path stem)")
    p.set_defaults(func=cmd_report)
    p = command("export", "write the sparse network at the end of a branch")
    p.add_argument("run_dir")
    p.add_argument("--branch", help="branch to export (default: the last one run)")
    p.add_argument("--stage", help="stage of that branch (default: its last)")
    p.add_argument("--out", help="output directory (default RUN_DIR/export)")
    p.add_argument(
        "--structured", action="store_true", help="also remove fully pruned units (smaller model)"
    )
    p.set_defaults(func=cmd_export)
    for impl in pm.hook.fipframe_add_commands.get_hookimpls() if pm is not None else ():
        try:  # one broken plugin: a warning
            impl.function(subparsers=sub)
        except Exception as exc:
            from fipframe.plugins import _describe

            pm.warnings.append(
                f"plugin {impl.plugin_name!r}: fipframe_add_commands failed ({_describe(exc)}); "
                "its commands are missing"
            )
    return top


def _help_only(argv: list[str]) -> bool:
    """Help, version or usage of the built-in commands: answered without loading plugins."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None:
        return True
    return first in COMMANDS and any(a in ("-h", "--help") for a in argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except BrokenPipeError:  # `fipframe schema | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a writer the pipe closed on


def _main(argv: list[str]) -> int:
    if _help_only(argv):
        parser(None).parse_args(argv)  # prints and exits
    from fipframe.plugins import SWITCHES, make_plugin_manager

    pm = make_plugin_manager()
    top = parser(pm)
    args, rest = top.parse_known_args(argv)
    stray = [
        a
        for a in rest
        if not (OVERRIDE.match(a) and isinstance(getattr(args, "config", None), list))
    ]
    if stray:
        top.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:  # key=value after options: overrides too
        args.config = [*args.config, *rest]
    args.pm = pm  # every command, plugin commands too, can reach the plugin manager
    if args.command != "plugins" and (pm.failures or pm.warnings):
        for problem in [*map(str, pm.failures), *pm.warnings]:
            print(f"warning: {problem}", file=sys.stderr)
        print(f"warning: ({SWITCHES})", file=sys.stderr)
    args.argv = argv
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except FipframeError as exc:
        if getattr(exc, "echo", False):  # rank 0's error: rank 0 prints it
            return 1 if isinstance(exc, TraversalError) else EXIT_CONFIG
        return _report(exc)
    except BrokenPipeError:
        raise
    except OSError as exc:  # a full disk, a file system gone read-only: no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


def _report(exc: FipframeError) -> int:
    """Print one of fipframe's errors without a traceback; the exit code it means."""
    if isinstance(exc, (ConfigError, RunDirError)):
        lines = exc.problems if isinstance(exc, RunDirError) else str(exc).splitlines()
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_CONFIG if isinstance(exc, PluginError) else 1


if __name__ == "__main__":
    raise SystemExit(main())
