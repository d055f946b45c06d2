"""Evaluation: results of a run, tables and plots."""

from fipframe.eval.results import RunResult

__all__ = ["RunResult"]
