"""Lockstep paths: several runs of one architecture in one process, their steps stacked.

Each run is a normal traversal with its own run directory, records, checkpoint and random
streams; :meth:`Traversal.walk <fipframe.traversal.engine.Traversal.walk>` walks it as a
generator that stops at every step it could share and yields a :class:`Request`: the point,
the inputs of the step's one training forward and the loss cut after it
(:class:`~fipframe.core.integrator.Split`). :func:`run_together` advances every walk to its
next request, stacks the requests that fit together (same model config and parameter shapes,
same input shapes, dtype and device) with ``torch.func.vmap`` over a path axis, computes their
gradients in one forward and one backward, and hands each walk its own gradient
(:class:`~fipframe.core.integrator.Given`). The rest of a step (the optimiser, a natural
step's solve), chunk ends (evaluation, records, checkpoints) and rollbacks stay each path's
own, so a path walks what it walks alone, to float tolerance.

A step that cannot be stacked is computed where it is, and its path goes on alone until it can
be again; each reason is said once per stage (:class:`Notes`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fipframe.core.integrator import Given, StepProblem, Terms, weighted_total
from fipframe.core.params import Params
from fipframe.data import inputs as I

#: what a walk yields (a Request) and is sent back (its gradient, or None: compute it yourself)
Walk = Generator["Request", "Given | None", Any]


@dataclass
class Request:
    """One path's step, offered for stacking."""

    problem: StepProblem
    params: Params  # the point the integrator is handed (the moving parameters)
    alpha: float
    reduction: str
    buffers: dict[str, Tensor]  # the module's (constant in a stackable step)
    key: tuple[Any, ...]  # requests with equal keys stack


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Notes:
    """Says once per stage why a path's steps are not stacked (``label`` names the run)."""

    def __init__(self, say: Callable[[str], None] = _stderr, label: str = ""):
        self.say = say
        self.label = f"{label}: " if label else ""
        self.said: set[tuple[str, str]] = set()

    def alone(self, where: str, reason: str) -> None:
        if (where, reason) not in self.said:
            self.said.add((where, reason))
            self.say(f"lockstep: {self.label}{where}: {reason}; its steps are computed alone")


def request(
    comp: Any, integrator: Any, problem: StepProblem, params: Params, where: str, notes: Notes
) -> Request | None:
    """The step as a :class:`Request`, or None (said through ``notes``) if it cannot stack."""
    reason = None
    loss = integrator.lockstep_loss(problem)
    if loss is None:
        reason = (
            f"integrator {type(integrator).__name__} does not declare lockstep_loss (one "
            "riemannian_gradient at its point)"
        )
    elif comp.mode_dependent:
        reason = (
            "the model has dropout or BatchNorm (its training forward draws random numbers or "
            "updates statistics, which are each path's own)"
        )
    elif problem.split is None:
        reason = "the step has more than one forward"
    elif comp.config.run.compile:
        reason = "run.compile is on (a compiled forward is not vmapped)"
    elif comp.model_source != "config":
        reason = "the model was given from Python (only config models are known to be alike)"
    if reason is not None:
        notes.alone(where, reason)
        return None
    assert loss is not None and problem.split is not None
    whole = problem.split.whole(params)
    x = problem.split.inputs
    key = (
        comp.config.model.model_dump_json(),
        tuple((n, tuple(t.shape), t.dtype) for n, t in whole.items()),
        tuple(params),
        (I.signature(x), I.length(x)) if x is not None else None,
        str(comp.device),
        comp.dtype,
        comp.config.run.autocast,
    )
    buffers = dict(comp.adapter.model.named_buffers())
    return Request(problem, params, loss[0], loss[1], buffers, key)


def gradients(group: Sequence[Request]) -> list[Given]:
    """Every request's gradient from one vmapped forward and one backward."""
    first = group[0]
    names = list(first.params)
    stacked = {
        n: torch.stack([r.params[n].detach() for r in group]).requires_grad_(True) for n in names
    }
    held = {
        n: torch.stack([r.problem.split.whole({})[n] for r in group])  # type: ignore[union-attr]
        for n in first.problem.split.whole({})  # type: ignore[union-attr]
        if n not in stacked
    }
    buffers = {n: torch.stack([r.buffers[n] for r in group]) for n in first.buffers}
    inputs = [r.problem.split.inputs for r in group]  # type: ignore[union-attr]
    out = None
    if inputs[0] is not None:
        forward = first.problem.split.forward  # type: ignore[union-attr]
        x = _stack(inputs)
        out = torch.func.vmap(lambda p, b, xi: forward({**p, **b}, xi))(
            {**held, **stacked}, buffers, x
        )
    results: list[tuple[Terms, Tensor]] = []
    total: Tensor | None = None
    for k, r in enumerate(group):
        split = r.problem.split
        assert split is not None
        point = {**{n: v[k] for n, v in held.items()}, **{n: v[k] for n, v in stacked.items()}}
        terms = split.terms(point, out[k] if out is not None else None)
        path_total = weighted_total(terms, r.alpha, r.reduction)
        results.append((terms, path_total))
        total = path_total if total is None else total + path_total
    assert total is not None
    grads = torch.autograd.grad(total, list(stacked.values()), allow_unused=True)
    return [
        Given(
            r.params,
            r.alpha,
            r.reduction,
            [
                torch.zeros_like(r.params[n]) if g is None else g[k]
                for n, g in zip(names, grads, strict=True)
            ],
            terms,
            path_total.detach(),
        )
        for k, (r, (terms, path_total)) in enumerate(zip(group, results, strict=True))
    ]


def _stack(parts: list[Any]) -> Any:
    if I.is_mapping(parts[0]):
        return {k: torch.stack([p[k] for p in parts]) for k in parts[0]}
    return torch.stack(parts)


def alone(walk: Walk) -> Any:
    """Walk to the end with nothing stacked; its return value."""
    try:
        while True:
            walk.send(None)
    except StopIteration as stop:
        return stop.value


@dataclass
class Outcome:
    """How one walk ended: its return value, or the exception that stopped it."""

    value: Any = None
    error: BaseException | None = None
    stacked: int = 0  # steps computed with other paths'


def run_together(
    walks: Sequence[Walk],
    *,
    say: Callable[[str], None] = _stderr,
    on_end: Callable[[int, Outcome], None] | None = None,
) -> list[Outcome]:
    """Advance every walk, stacking the steps that fit together, until all have ended.

    A walk that raises ends with its exception (the others go on, as runs of a sweep do);
    Ctrl-C (any BaseException outside a walk's own) closes every walk and propagates: each
    run directory keeps its last committed chunk. ``on_end(i, outcome)`` hears of each end.
    """
    outcomes: dict[int, Outcome] = {}
    pending: dict[int, Request] = {}
    stacked = [0] * len(walks)
    alone: set[tuple[Any, ...]] = set()  # keys whose stacking failed once

    def advance(i: int, answer: Given | None) -> None:
        try:
            pending[i] = walks[i].send(answer) if i in started else next(walks[i])
            started.add(i)
        except StopIteration as stop:
            end(i, Outcome(value=stop.value))
        except Exception as exc:  # this run's failure; the others go on
            end(i, Outcome(error=exc))

    def end(i: int, outcome: Outcome) -> None:
        pending.pop(i, None)
        outcome.stacked = stacked[i]
        outcomes[i] = outcome
        if on_end is not None:
            on_end(i, outcome)

    started: set[int] = set()
    try:
        for i in range(len(walks)):
            advance(i, None)
        while pending:
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, r in pending.items():
                groups.setdefault(r.key, []).append(i)
            for key, members in groups.items():
                answers: list[Given | None] = [None] * len(members)
                if len(members) > 1 and key not in alone:
                    try:
                        answers = list(gradients([pending[i] for i in members]))
                    except Exception as exc:  # vmap's limits: compute these steps alone
                        alone.add(key)
                        say(
                            f"lockstep: {len(members)} paths could not be stacked "
                            f"({type(exc).__name__}: {exc}); they step one after another"
                        )
                for i, answer in zip(members, answers, strict=True):
                    stacked[i] += answer is not None
                    advance(i, answer)
    finally:
        for i, walk in enumerate(walks):
            if i not in outcomes:
                walk.close()  # each run's own cleanup (locks, loggers, loader workers)
    return [outcomes[i] for i in range(len(walks))]
