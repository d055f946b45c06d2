"""``fipframe run | validate | schema | plugins | presets | report | export``.

Configuration problems, damaged or busy run directories print one line each and exit with 2,
without a traceback; a traversal that cannot go on (divergence, non-finite values) and a file
system error (a full disk) exit with 1. Ctrl-C during a run exits with 130 and prints how to
resume (or that nothing was saved yet).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fipframe.errors import ConfigError, PluginError, RunDirError, TraversalError

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def _load(args: argparse.Namespace) -> Any:
    from fipframe.api import load_config

    if args.config and args.preset:
        raise ConfigError("give a config file or --preset, not both")
    if not args.config and not args.preset:
        raise ConfigError("give a config file or --preset NAME (see `fipframe presets`)")
    return load_config(args.config, preset=args.preset, overrides=args.set or (), pm=args.pm)


def cmd_run(args: argparse.Namespace) -> int:
    from fipframe.api import resume, run

    if args.resume:
        if args.config or args.preset:
            raise ConfigError("--resume takes the run directory only; its config.yaml is used")
        out: Path = Path(args.resume)
    else:
        config = _load(args)
        out = Path(args.out) if args.out else Path("runs") / config.name
    if args.force and not args.resume:
        raise ConfigError("--force applies to --resume only")
    try:
        if args.resume:
            result = resume(out, overrides=args.set or (), force=args.force, pm=args.pm)
        else:
            result = run(config, out=out)
    except KeyboardInterrupt:
        from fipframe.traversal.artifact import CHECKPOINT

        if (out / CHECKPOINT).exists():
            said = f"the last chunk is saved. Resume with: fipframe run --resume {out}"
        else:
            said = f"nothing was saved yet (no checkpoint in {out}); run it again"
        print(f"\ninterrupted; {said}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(result.table())
    print(f"\nrun directory: {out}  (plot: {out / 'accuracy.png'})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    stages = sum(len(s) for _, s in config.all_stages())
    print(f"ok: {config.name} ({stages} stages, {len(config.branches)} branches)")
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
    from fipframe.api import presets

    for name, summary in presets(args.pm).items():
        print(f"{name:<24} {summary}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fipframe.eval.results import RunResult
    from fipframe.traversal.artifact import RunDir

    result = RunResult.load(args.run_dir)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(result.table())
    rd = RunDir(args.run_dir)
    live = rd.busy()
    if live:  # another process is writing the run: read, but do not write into it
        print("\nplot not written: the run is in use (see its .lock); report it when it ends")
    else:
        out = result.plot(Path(args.run_dir) / "accuracy.png")
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


def parser(pm: Any) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fipframe", description="functionally invariant paths")
    from fipframe import __version__

    top.add_argument("--version", action="version", version=f"fipframe {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", nargs="?", help="YAML or JSON config file")
        p.add_argument("--preset", help="a shipped preset (see `fipframe presets`)")
        p.add_argument(
            "--set",
            action="append",
            metavar="PATH=VALUE",
            help="override a field, e.g. --set stages.0.steps=200 (repeatable)",
        )

    p = sub.add_parser("run", help="run a traversal")
    config_args(p)
    p.add_argument("--out", help="run directory (default runs/<name>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --resume: accept a config.yaml edited by hand or changes to finished stages "
        "(recorded as forced in changes.jsonl)",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("validate", help="validate a config against the installed plugins")
    config_args(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="print the JSON schema of configs (installed plugins)")
    p.add_argument("--out", help="write to a file instead of stdout")
    p.add_argument("--markdown", action="store_true", help="a readable reference of every kind")
    p.set_defaults(func=cmd_schema)
    sub.add_parser("plugins", help="list kinds per family and where they come from").set_defaults(
        func=cmd_plugins
    )
    sub.add_parser("presets", help="list shipped and plugin presets").set_defaults(func=cmd_presets)
    p = sub.add_parser("report", help="table and plot of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("export", help="write the sparse network at the end of a branch")
    p.add_argument("run_dir")
    p.add_argument("--branch", help="branch to export (default: the last one run)")
    p.add_argument("--stage", help="stage of that branch (default: its last)")
    p.add_argument("--out", help="output directory (default RUN_DIR/export)")
    p.add_argument(
        "--structured", action="store_true", help="also remove fully pruned units (smaller model)"
    )
    p.set_defaults(func=cmd_export)
    for impl in pm.hook.fipframe_add_commands.get_hookimpls():  # one broken plugin: a warning
        try:
            impl.function(subparsers=sub)
        except Exception as exc:
            from fipframe.plugins import _describe

            pm.warnings.append(
                f"plugin {impl.plugin_name!r}: fipframe_add_commands failed ({_describe(exc)}); "
                "its commands are missing"
            )
    return top


def main(argv: list[str] | None = None) -> int:
    from fipframe.plugins import SWITCHES, make_plugin_manager

    pm = make_plugin_manager()
    args = parser(pm).parse_args(argv)
    args.pm = pm  # every command, plugin commands too, can reach the plugin manager
    if args.command != "plugins" and (pm.failures or pm.warnings):
        for problem in [*map(str, pm.failures), *pm.warnings]:
            print(f"warning: {problem}", file=sys.stderr)
        print(f"warning: ({SWITCHES})", file=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RunDirError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except TraversalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a file system gone read-only: no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
