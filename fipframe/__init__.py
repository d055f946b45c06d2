"""fipframe: functionally invariant paths in weight space.

Public API::

    import fipframe
    config = fipframe.load_config(preset="split-mnist")
    result = fipframe.run(config, out="runs/demo")
    print(result.table())

    # or the FIP term in your own loop (docs/examples/own_loop.py)
    fip = fipframe.FIPRegularizer(model, stored_inputs, metric="kl", alpha=10.0)
    loss = task_loss + fip()
"""

import os as _os

# MKL's results otherwise depend on memory alignment, so a resumed run could drift from an
# uninterrupted one in the last bits. AUTO keeps the fastest code paths (no measurable cost in
# bench/step_cost.py). Set before torch loads MKL; a value the user set wins.
_os.environ.setdefault("MKL_CBWR", "AUTO")

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so `import fipframe` and the command line's help
# do not load torch (about 2 s).
_LAZY = {
    "build": "fipframe.api",
    "load_config": "fipframe.api",
    "preset_path": "fipframe.api",
    "presets": "fipframe.api",
    "resume": "fipframe.api",
    "run": "fipframe.api",
    "run_lockstep": "fipframe.api",
    "ArchitectureAdapter": "fipframe.core.adapter",
    "task_sequence": "fipframe.data.user",
    "ConfigError": "fipframe.errors",
    "PluginError": "fipframe.errors",
    "TraversalError": "fipframe.errors",
    "RunResult": "fipframe.eval.results",
    "FIPRegularizer": "fipframe.fip",
    "fip_penalty": "fipframe.fip",
    "make_metric": "fipframe.fip",
    "metric_vp": "fipframe.fip",
    "hookimpl": "fipframe.plugins",
    "make_plugin_manager": "fipframe.plugins",
    "Spec": "fipframe.registry",
    "Traversal": "fipframe.traversal.engine",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fipframe' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ArchitectureAdapter",
    "ConfigError",
    "FIPRegularizer",
    "PluginError",
    "RunResult",
    "Spec",
    "Traversal",
    "TraversalError",
    "__version__",
    "build",
    "fip_penalty",
    "hookimpl",
    "load_config",
    "make_metric",
    "make_plugin_manager",
    "metric_vp",
    "preset_path",
    "presets",
    "resume",
    "run",
    "run_lockstep",
    "task_sequence",
]
