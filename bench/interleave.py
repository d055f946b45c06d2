"""Timing shared by the step benchmarks: every runner once per round, rounds interleaved."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch


def interleaved(
    runners: dict[str, Callable[[], None]], device: torch.device, warmup: int, steps: int
) -> dict[str, list[float]]:
    """Seconds per call of each runner over ``steps`` rounds after ``warmup`` rounds.

    Running the contenders in turn, round by round, makes drift in machine load hit them alike.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(warmup + steps):
        for name, fn in runners.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def machine(device: object) -> str:
    """What a timing ran on, for the bench's header line: device, torch, threads, CPU, date."""
    return (
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
