"""The traversal engine (scheduler), the Path artifact and resume."""

from fipframe.traversal.artifact import RunDir, load_point
from fipframe.traversal.engine import Position, Traversal

__all__ = ["Position", "RunDir", "Traversal", "load_point"]
