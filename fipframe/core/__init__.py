"""The interfaces every plugin implements and the math they share."""

from fipframe.core.adapter import ArchitectureAdapter
from fipframe.core.configs import (
    NonNegative,
    PluginConfig,
    Positive,
    Ramp,
    RunFile,
    Scheduled,
    Width,
    value_at,
)
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
    "NonNegative",
    "ParamSpace",
    "Params",
    "PathIntegrator",
    "PluginConfig",
    "Positive",
    "Ramp",
    "RunFile",
    "Scheduled",
    "SecondaryObjective",
    "StageContext",
    "StepProblem",
    "Terms",
    "Width",
    "value_at",
]
