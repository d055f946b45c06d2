"""The interfaces every plugin implements and the math they share."""

from fipframe.core.adapter import ArchitectureAdapter
from fipframe.core.configs import PluginConfig, Ramp, Scheduled, value_at
from fipframe.core.integrator import PathIntegrator, StepProblem, Terms
from fipframe.core.logger import Logger
from fipframe.core.manifold import Euclidean, GeooptManifold, Manifold
from fipframe.core.metric import Metric
from fipframe.core.objective import Batch, SecondaryObjective, StageContext
from fipframe.core.params import Params, ParamSpace

__all__ = [
    "ArchitectureAdapter",
    "Batch",
    "Euclidean",
    "GeooptManifold",
    "Logger",
    "Manifold",
    "Metric",
    "ParamSpace",
    "Params",
    "PathIntegrator",
    "PluginConfig",
    "Ramp",
    "Scheduled",
    "SecondaryObjective",
    "StageContext",
    "StepProblem",
    "Terms",
    "value_at",
]
