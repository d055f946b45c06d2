"""Every hook fipframe calls, in one file, grouped by phase.

A plugin is any module or object with functions named like these hooks and decorated with
``fipframe.hookimpl``. Distributions announce plugins through the entry-point group
``fipframe``; built-ins register the same way. ``docs/hooks.md`` documents each hook and a
test keeps the two in step.

Registration hooks return lists of :class:`fipframe.registry.Spec`; the registry attributes
each spec to the plugin that returned it. Lifecycle hooks fire once per chunk (every
``run.chunk`` steps), never per step.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from fipframe.core.adapter import ArchitectureAdapter
    from fipframe.registry import Registry, Spec
    from fipframe.traversal.engine import RunResult, Traversal

hookspec = pluggy.HookspecMarker("fipframe")


# --- registration ----------------------------------------------------------------------------


@hookspec
def fipframe_register_manifolds() -> list[Spec]:
    """Return manifold specs. Called once when a registry is built.

    Factory signature: ``factory(config) -> fipframe.core.Manifold``.

    Example::

        @fipframe.hookimpl
        def fipframe_register_manifolds():
            return [Spec("euclidean", EuclideanConfig, EuclideanManifold, "flat weight space")]
    """


@hookspec
def fipframe_register_metrics() -> list[Spec]:
    """Return metric specs (output divergences and other task-encoding metrics).

    Factory signature: ``factory(config) -> fipframe.core.Metric``.

    Example::

        @fipframe.hookimpl
        def fipframe_register_metrics():
            return [Spec("tempered_kl", TemperedKLConfig, TemperedKL, "KL at temperature T")]
    """


@hookspec
def fipframe_register_integrators() -> list[Spec]:
    """Return path-integrator specs (the step rule).

    Factory signature: ``factory(config) -> fipframe.core.PathIntegrator``. The class declares
    ``capabilities = frozenset({"needs_metric"})`` if the step uses the metric, and
    ``"metric:<ability>"`` (``solve``, ``spectrum``, ``diag``, ``mvp``) for each ability it needs
    from the metric; the Spec reads them and ``fipframe validate`` checks the metric declares it.

    Example::

        class Penalty(PathIntegrator):
            capabilities = frozenset({"needs_metric"})
            ...

        @fipframe.hookimpl
        def fipframe_register_integrators():
            return [Spec("penalty", PenaltyConfig, Penalty, "optimiser on L + alpha*D")]
    """


@hookspec
def fipframe_register_objectives() -> list[Spec]:
    """Return secondary-objective specs.

    Factory signature: ``factory(config) -> fipframe.core.SecondaryObjective``.

    Example::

        @fipframe.hookimpl
        def fipframe_register_objectives():
            return [Spec("task_ce", TaskCEConfig, TaskCE, "cross-entropy on the stage's task")]
    """


@hookspec
def fipframe_register_adapters() -> list[Spec]:
    """Return architecture specs: a model builder together with how to traverse it.

    Factory signature: ``factory(config, *, input_shape, num_classes) ->
    fipframe.core.ArchitectureAdapter``.

    Example::

        @fipframe.hookimpl
        def fipframe_register_adapters():
            return [Spec("mlp", MLPConfig, build_mlp, "fully connected ReLU network")]
    """


@hookspec
def fipframe_register_datasets() -> list[Spec]:
    """Return dataset specs; each builds a task sequence.

    Factory signature: ``factory(config, *, seed) -> fipframe.data.TaskSequence``.

    Example::

        @fipframe.hookimpl
        def fipframe_register_datasets():
            return [Spec("split_mnist", SplitMNISTConfig, build_split_mnist, "MNIST by classes")]
    """


@hookspec
def fipframe_register_loggers() -> list[Spec]:
    """Return logger specs: sinks that receive each chunk's metrics.

    Factory signature: ``factory(config, *, run_dir) -> fipframe.core.Logger``.

    Example::

        @fipframe.hookimpl
        def fipframe_register_loggers():
            return [Spec("csv", CSVLoggerConfig, CSVLogger, "metrics.csv in the run directory")]
    """


# --- configuration ---------------------------------------------------------------------------


@hookspec
def fipframe_register_presets() -> list[str]:
    """Return directories holding this plugin's preset files (``NAME.yaml``).

    ``fipframe presets`` lists them beside the shipped ones and ``--preset NAME`` runs them;
    a name already taken by fipframe or an earlier plugin is refused (listing or loading any
    preset then fails, naming both files).

    Example::

        @fipframe.hookimpl
        def fipframe_register_presets():
            return [str(importlib.resources.files("my_plugin") / "presets")]
    """


@hookspec
def fipframe_check_config(config: Any, registry: Registry) -> list[str] | None:
    """Check rules that span several components of a validated RunConfig.

    Called after pydantic validation. Return problems as ``"field.path: message"`` strings;
    all plugins' problems are reported together in one ConfigError.

    Example::

        @fipframe.hookimpl
        def fipframe_check_config(config, registry):
            return [f"stages[{i}].metric: required by integrator {s.integrator.kind!r}"
                    for i, s in enumerate(config.stages)
                    if s.metric is None and s.integrator.kind == "natural"]
    """


@hookspec(firstresult=True)
def fipframe_resolve_adapter(
    model: Any, traversable: tuple[str, ...], frozen: tuple[str, ...]
) -> ArchitectureAdapter | None:
    """Return an adapter for a model given from Python (``fipframe.build(config, model=m)``).

    ``traversable`` and ``frozen`` are the config's ``model.traversable`` / ``model.frozen``
    globs when the config has a ``model:``, else ``("*",)`` and ``()``. The first non-None result
    wins; the built-in fallback adapts any plain ``torch.nn.Module`` and is tried last. (An
    ``ArchitectureAdapter`` passed as ``model=`` is used as it is, without this hook.)
    An implementation may take any subset of the arguments.

    Example::

        @fipframe.hookimpl(tryfirst=True)
        def fipframe_resolve_adapter(model, traversable, frozen):
            if isinstance(model, MyHFModel):
                return HFAdapter(model, traversable=traversable, frozen=frozen)
    """


# --- lifecycle -------------------------------------------------------------------------------


@hookspec
def fipframe_traversal_start(run: Traversal) -> None:
    """Called once when a traversal starts (or resumes), after everything is built.

    Example::

        @fipframe.hookimpl
        def fipframe_traversal_start(run):
            print("traversing", run.config.name, "on", run.device)
    """


@hookspec
def fipframe_chunk_end(run: Traversal, step: int, metrics: dict[str, float]) -> None:
    """Called at the end of every chunk (``run.chunk`` steps) with that chunk's metrics.

    ``metrics`` holds plain floats keyed by hierarchical names (``acc/test/task_0``,
    ``loss/total``) plus ``branch``/``stage`` labels in ``run.position``. Raising
    ``KeyboardInterrupt`` here stops the run just as Ctrl-C would; the last chunk is saved.
    Under data parallelism (torchrun) every process calls it with the same metrics;
    ``run.rank`` says which process this is (log or write files on rank 0 only; ``run.evaluate``
    evaluates in the calling process alone, so it is safe there).

    Example::

        @fipframe.hookimpl
        def fipframe_chunk_end(run, step, metrics):
            wandb.log(metrics, step=step)
    """


@hookspec
def fipframe_traversal_end(run: Traversal, result: RunResult) -> None:
    """Called once when a traversal finishes, with its result.

    Example::

        @fipframe.hookimpl
        def fipframe_traversal_end(run, result):
            print(result.table())
    """


# --- command line ----------------------------------------------------------------------------


@hookspec
def fipframe_add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to the ``fipframe`` CLI.

    Set ``func`` on the sub-parser with ``set_defaults``; it receives the parsed arguments
    (with the plugin manager as ``args.pm``) and returns an exit code.

    Example::

        @fipframe.hookimpl
        def fipframe_add_commands(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.set_defaults(func=lambda args: print("hello") or 0)
    """
