"""Conformance kit for plugin authors: tiny models and checks every plugin should pass.

Use it in your plugin's tests::

    from fipframe.testing import check_metric, tiny_models
    def test_my_metric():
        for name, forward, params in tiny_models():
            check_metric(MyMetric(MyConfig()), forward, params)
"""

from fipframe.testing.kit import (
    check_integrator_fixed_point,
    check_metric,
    check_retraction,
    first_task_mlp,
    tiny_models,
)
from fipframe.testing.text import TinyTextClassifier, token_tasks

__all__ = [
    "TinyTextClassifier",
    "check_integrator_fixed_point",
    "check_metric",
    "check_retraction",
    "first_task_mlp",
    "tiny_models",
    "token_tasks",
]
