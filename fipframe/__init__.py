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

from fipframe.api import build, load_config, preset_path, presets, resume, run  # noqa: E402
from fipframe.core.adapter import ArchitectureAdapter  # noqa: E402
from fipframe.data.user import task_sequence  # noqa: E402
from fipframe.errors import ConfigError, PluginError, TraversalError  # noqa: E402
from fipframe.eval.results import RunResult  # noqa: E402
from fipframe.fip import FIPRegularizer, fip_penalty, make_metric, metric_vp  # noqa: E402
from fipframe.plugins import hookimpl, make_plugin_manager  # noqa: E402
from fipframe.registry import Spec  # noqa: E402
from fipframe.traversal.engine import Traversal  # noqa: E402

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
    "task_sequence",
]
