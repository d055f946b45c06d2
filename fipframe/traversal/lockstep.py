"""Lockstep paths: several runs of one architecture in one process, their steps stacked.

Each run is a normal traversal with its own run directory, records, checkpoint and random
streams; :meth:`Traversal.walk <fipframe.traversal.engine.Traversal.walk>` walks it as a
generator that stops where it could share work and yields a request:

- :class:`Request`, a step: the point, the inputs of the step's one training forward and the
  loss cut after it (:class:`~fipframe.core.integrator.Split`);
- :class:`EvalRequest`, a chunk-end or stage-end evaluation: the point and every val and test
  split's inputs.

:func:`run_together` advances every walk to its next request, stacks the requests that fit
together (same model config and parameter shapes, same input shapes, dtype and device) with
``torch.func.vmap`` over a path axis, computes them for all at once (a step's gradients in one
forward and one backward; an evaluation's outputs batch by batch) and hands each walk its own
part (:class:`~fipframe.core.integrator.Given`; the outputs, counted by the path's own
evaluator). A step rule that declares its solve (:meth:`PathIntegrator.lockstep_solve
<fipframe.core.integrator.PathIntegrator.lockstep_solve>`: the natural step's CG, the
projected step's Lanczos at a refresh) gets it solved for all paths at once too, one stacked
metric-vector product per iteration, each path stopping where it would alone. The rest of a
step (the optimiser, momentum, the retraction), the chunk's path measures, records,
checkpoints and rollbacks stay each path's own, so a path walks what it walks alone, to float
tolerance.

A step that cannot be stacked is computed where it is, and its path goes on alone until it can
be again; each reason is said once per stage (:class:`Notes`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fipframe.core.integrator import (
    Given,
    Solved,
    SolveSpec,
    SpectrumSpec,
    StepProblem,
    Terms,
    weighted_total,
)
from fipframe.core.linalg import conjugate_gradients, lanczos_paths
from fipframe.core.manifold import Euclidean
from fipframe.core.params import Params, ParamSpace, like
from fipframe.data import inputs as I

#: what a walk yields (a Request or EvalRequest) and is sent back (the gradient or outputs, or
#: None: compute them yourself)
Walk = Generator[Any, Any, Any]


@dataclass
class Request:
    """One path's step, offered for stacking; requests with equal keys stack."""

    problem: StepProblem
    params: Params  # the point the integrator is handed (the moving parameters)
    alpha: float
    reduction: str
    #: the module's other tensors (frozen parameters, buffers): each path's own, stacked too
    rest: dict[str, Tensor]
    key: tuple[Any, ...]
    #: the solve the step makes with the gradient (stacked too, with the requests of equal
    #: ``solve_key`` among those whose gradients stack), and the path's network
    solve: SolveSpec | SpectrumSpec | None = None
    solve_key: tuple[Any, ...] | None = None
    adapter: Any = None

    @staticmethod
    def stacked(group: Sequence[Request], trouble: Trouble) -> list[Given]:
        stacks = Stacks.of(group)  # the K networks stacked once, for the gradients and solves
        given = gradients(group, stacks)
        kinds: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(group):
            if r.solve_key is not None and not trouble.given_up(r.solve_key):
                kinds.setdefault(r.solve_key, []).append(i)
        for key, members in kinds.items():
            if len(members) < 2:
                continue  # a solve alone is the path's own
            solve = {"solve": solves, "spectrum": spectra}[key[0]]
            sub = stacks if len(members) == len(group) else stacks.rows(members)
            try:  # (each Given gets its solve only once every path's is done)
                solve([group[i] for i in members], [given[i] for i in members], sub)
            except Exception as exc:  # vmap's limits, the memory of K graphs: solved alone
                trouble.failed(key, exc, len(members))
            else:
                trouble.managed(key)
        return given


@dataclass
class EvalRequest:
    """One path's chunk-end evaluation, offered for stacking: its outputs on every val and
    test split (:meth:`Evaluator.splits <fipframe.eval.measure.Evaluator.splits>`)."""

    adapter: Any  # the path's network (its forward, in eval mode)
    params: Params  # the whole point
    inputs: list[Any]  # every split's inputs
    batch_size: int
    rest: dict[str, Tensor]  # the module's frozen parameters and buffers
    key: tuple[Any, ...]

    @staticmethod
    def stacked(group: Sequence[EvalRequest], trouble: Trouble) -> list[list[Tensor]]:
        return outputs(group)


class Trouble:
    """Stackings that failed in a row, per key: twice, and that key is computed alone from
    then on (said once)."""

    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.count: dict[tuple[Any, ...], int] = {}

    def given_up(self, key: tuple[Any, ...]) -> bool:
        return self.count.get(key, 0) >= 2

    def failed(self, key: tuple[Any, ...], exc: BaseException, paths: int) -> None:
        self.count[key] = self.count.get(key, 0) + 1
        if self.count[key] == 2:
            self.say(
                f"lockstep: {paths} paths' {key[0]} could not be stacked "
                f"({type(exc).__name__}: {exc}); each computes it alone from now on"
            )

    def managed(self, key: tuple[Any, ...]) -> None:
        self.count.pop(key, None)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Notes:
    """Says once per stage why a path's steps are not stacked (``label`` names the run)."""

    def __init__(self, say: Callable[[str], None] = _stderr, label: str = ""):
        self.say = say
        self.name = label
        self.label = f"{label}: " if label else ""
        self.said: set[tuple[str, str]] = set()

    def alone(self, where: str, reason: str, what: str = "steps") -> None:
        if (where, reason) not in self.said:
            self.said.add((where, reason))
            self.say(f"lockstep: {self.label}{where}: {reason}; its {what} are computed alone")


def request(
    comp: Any,
    integrator: Any,
    problem: StepProblem,
    params: Params,
    where: str,
    notes: Notes,
    solves: bool = True,
    state: Any = None,
) -> Request | None:
    """The step as a :class:`Request`, or None (said through ``notes``) if it cannot stack.
    ``solves``: offer the step's solve for stacking too, where it declares one (for the
    integrator's ``state`` before the step)."""
    reason, what = None, "steps and evaluations"
    loss = integrator.lockstep_loss(problem) if _declares(integrator, "lockstep_loss") else None
    if comp.mode_dependent:
        reason = (
            "the model has dropout or BatchNorm (its training forward draws random numbers or "
            "updates statistics, which are each path's own)"
        )
    elif comp.model_source != "config":
        reason = "the model was given from Python (only config models are known to be alike)"
    elif loss is None:
        reason, what = (
            f"integrator {type(integrator).__name__} does not declare lockstep_loss beside "
            "its step (one riemannian_gradient at its point)",
            "steps",
        )
    elif problem.split is None:
        reason, what = "the step has more than one forward", "steps"
    elif comp.config.run.compile:
        reason, what = "run.compile is on (a compiled forward is not vmapped)", "steps"
    if reason is not None:
        notes.alone(where, reason, what)
        return None
    assert loss is not None and problem.split is not None
    x = problem.split.inputs
    key = (
        "step",
        *_model_key(comp, problem.split.whole(params)),
        tuple(params),
        _shape(x) if x is not None else None,
        comp.config.run.autocast,
    )
    rest = _rest(comp, problem.split.whole(params))
    spec = _solve_spec(integrator, problem, params, state, where, notes) if solves else None
    solve_key = None
    if spec is not None:  # solves stack among the steps that stack whose metrics are alike
        metric = problem.metric
        config = getattr(metric, "config", None)
        solve_key = (
            "solve" if isinstance(spec, SolveSpec) else "spectrum",
            *key[1:],
            f"{type(metric).__module__}.{type(metric).__qualname__}",
            config.model_dump_json() if hasattr(config, "model_dump_json") else repr(config),
            _shape(problem.split.stored),
        )
    return Request(problem, params, loss[0], loss[1], rest, key, spec, solve_key, comp.adapter)


def _solve_spec(
    integrator: Any, problem: StepProblem, params: Params, state: Any, where: str, notes: Notes
) -> Any:
    """The solve the step declares and lockstep paths can stack, or None."""
    if not _declares(integrator, "lockstep_solve", INTEGRATOR_SOLVE):
        return None
    spec = integrator.lockstep_solve(params, state, problem)
    metric = problem.metric
    if spec is None or metric is None or problem.stored_forward is None:
        return None  # no solve this step (a stage without stored inputs steps without one)
    if problem.split is None or problem.split.stored is None:
        return None
    if not _declares(metric, "mvp_paths", METRIC_PRODUCT):
        notes.alone(
            where,
            f"metric {type(metric).__name__} has its own mvp or operator but no mvp_paths "
            "(how to stack it)",
            "solves",
        )
        return None
    return spec


#: what a step rule's solve is made of (a subclass writing one of them writes its own solve)
INTEGRATOR_SOLVE = ("step", "direction", "operator", "_solve", "_spec")
#: what a metric's product is made of (``output_hvp`` is used by the stacked product as well)
METRIC_PRODUCT = ("mvp", "operator")


def _declares(obj: Any, promise: str, bases: Sequence[str] = ("step",)) -> bool:
    """``promise`` is declared by a class at or below every class that defines one of
    ``bases``: a plugin that subclasses a built-in and writes its own ``step`` (or its own
    solve, or a metric its own ``mvp``) does not inherit the promise."""
    mro = type(obj).__mro__
    promise_owner = next((c for c in mro if promise in c.__dict__), None)
    if promise_owner is None:
        return False
    owners = [next((c for c in mro if b in c.__dict__), None) for b in bases]
    return all(o is None or issubclass(promise_owner, o) for o in owners)


def eval_request(comp: Any, params: Params, where: str, notes: Notes) -> EvalRequest | None:
    """The evaluation of ``params`` as an :class:`EvalRequest`, or None where it is done
    alone (said through ``notes`` where :func:`request` would not say it)."""
    ev = comp.evaluator
    splits = ev.splits()
    if comp.mode_dependent or comp.model_source != "config":
        return None  # said by request()
    if any(getattr(d, "streamed", False) for *_, d in splits):
        notes.alone(where, "a split is streamed from disk", "evaluations")
        return None
    inputs = [d.x for *_, d in splits]
    bs = comp.config.run.eval_batch_size
    key = ("evaluate", *_model_key(comp, params), tuple(_shape(x) for x in inputs), bs)
    return EvalRequest(comp.adapter, params, inputs, bs, _rest(comp, params), key)


def _rest(comp: Any, point: Params) -> dict[str, Tensor]:
    """The path's module tensors outside ``point``: its frozen parameters (which differ between
    paths with other seeds or ``run.init``) and its buffers."""
    model = comp.adapter.model
    rest = {n: t.detach() for n, t in model.named_parameters() if n not in point}
    rest.update(model.named_buffers())
    return rest


def _model_key(comp: Any, whole: Params) -> tuple[Any, ...]:
    """What makes two paths' networks one function of their weights."""
    return (
        comp.config.model.model_dump_json(),
        tuple((n, tuple(t.shape), t.dtype) for n, t in whole.items()),
        str(comp.device),
        comp.dtype,
    )


def _shape(x: Any) -> tuple[Any, ...]:
    return I.signature(x), I.length(x)


@dataclass
class Stacks:
    """The K paths' networks as ``[K, ...]`` tensors: the moving weights (``point``), the
    weights their stage holds fixed (``held``) and the module's other tensors (``rest``)."""

    point: dict[str, Tensor]
    held: dict[str, Tensor]
    rest: dict[str, Tensor]

    @staticmethod
    def of(group: Sequence[Request]) -> Stacks:
        first = group[0]
        point = {n: torch.stack([r.params[n].detach() for r in group]) for n in first.params}
        wholes = [r.problem.split.whole({}) for r in group]  # type: ignore[union-attr]
        held = {n: torch.stack([w[n] for w in wholes]) for n in wholes[0] if n not in point}
        rest = {n: torch.stack([r.rest[n] for r in group]) for n in first.rest}
        return Stacks(point, held, rest)

    def rows(self, rows: Sequence[int] | Tensor) -> Stacks:
        """The paths ``rows`` alone (detached copies)."""
        index = torch.as_tensor(rows, device=next(iter(self.point.values())).device)
        pick = lambda d: {n: t.detach()[index] for n, t in d.items()}  # noqa: E731
        return Stacks(pick(self.point), pick(self.held), pick(self.rest))


def gradients(group: Sequence[Request], stacks: Stacks | None = None) -> list[Given]:
    """Every request's gradient from one vmapped forward and one backward."""
    first = group[0]
    names = list(first.params)
    stacks = stacks or Stacks.of(group)
    stacked = {n: t.requires_grad_(True) for n, t in stacks.point.items()}
    held, rest = stacks.held, stacks.rest
    inputs = [r.problem.split.inputs for r in group]  # type: ignore[union-attr]
    out = None
    if inputs[0] is not None:
        forward = first.problem.split.forward  # type: ignore[union-attr]
        x = _stack(inputs)
        out = torch.func.vmap(lambda p, b, xi: forward({**p, **b}, xi))(
            {**held, **stacked}, rest, x
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
            r.problem.evaluate,
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


def solves(group: Sequence[Request], given: Sequence[Given], stacks: Stacks) -> None:
    """Every request's declared CG solve for its Riemannian gradient, the K systems at once
    (:func:`~fipframe.core.linalg.conjugate_gradients`): one metric-vector product per
    iteration for the paths still solving, the stored forward vmapped over them. Each path's
    gradient and solve go into its :class:`Given`."""
    first = group[0]
    space = ParamSpace.of(first.params)
    rgrads = [
        r.problem.manifold.egrad2rgrad(r.params, like(r.params, g.grads))
        for r, g in zip(group, given, strict=True)
    ]
    b = torch.stack([space.flatten(rg) for rg in rgrads])
    specs = [r.solve for r in group]
    with _operator(group, stacks) as matvec:
        done = conjugate_gradients(
            matvec,
            b,
            damping=[s.damping for s in specs],  # type: ignore[union-attr]
            iters=[s.iters for s in specs],  # type: ignore[union-attr]
            tol=[s.tol for s in specs],  # type: ignore[union-attr]
        )
    for g, rgrad, spec, solve in zip(given, rgrads, specs, done, strict=True):
        g.rgrad = rgrad
        g.solved = Solved(rgrad, spec, solve, Solved.of(rgrad))  # type: ignore[arg-type]


def spectra(group: Sequence[Request], given: Sequence[Given], stacks: Stacks) -> None:
    """Every request's declared Lanczos run at its point, the K operators at once
    (:func:`~fipframe.core.linalg.lanczos_paths`); each eigenbasis goes into its
    :class:`Given`."""
    first = group[0]
    size = ParamSpace.of(first.params).size
    specs = [r.solve for r in group]
    with _operator(group, stacks) as matvec:
        done = lanczos_paths(
            matvec,
            size,
            [s.k for s in specs],  # type: ignore[union-attr]
            iters=[s.iters for s in specs],  # type: ignore[union-attr]
            seeds=[s.seed for s in specs],  # type: ignore[union-attr]
            like=next(iter(first.params.values())),
        )
    for g, r, spec, eig in zip(given, group, specs, done, strict=True):
        g.solved = Solved(None, spec, eig, Solved.of(r.params), at=r.params)  # type: ignore[arg-type]


@contextlib.contextmanager
def _operator(
    group: Sequence[Request], stacks: Stacks
) -> Iterator[Callable[[Tensor, Tensor | None], Tensor]]:
    """``matvec(v, rows)``: ``P g P v`` of the paths ``rows`` (None: all), each at its own
    point on its own stored inputs, in one metric-vector product (``Metric.mvp_paths``) with
    the stored forward vmapped over them; the network in eval mode meanwhile, as each path's
    stored forward has it."""
    first = group[0]
    names, k = list(first.params), len(group)
    space = ParamSpace.of(first.params)
    point = {n: t.detach() for n, t in stacks.point.items()}
    held, rest = stacks.held, stacks.rest
    stored = _stack([r.problem.split.stored for r in group])  # type: ignore[union-attr]
    adapter = first.adapter
    metric = first.problem.metric
    assert metric is not None
    euclidean = all(isinstance(r.problem.manifold, Euclidean) for r in group)
    picked: dict[str, Any] = {"rows": None, "of": (point, held, rest, stored), "which": range(k)}

    def matvec(v: Tensor, rows: Tensor | None) -> Tensor:
        if rows is not picked["rows"]:  # the paths still running changed: pick theirs once
            picked["rows"], picked["which"] = rows, rows.tolist()  # type: ignore[union-attr]
            picked["of"] = (
                *({n: t[rows] for n, t in d.items()} for d in (point, held, rest)),
                I.take(stored, rows),  # type: ignore[arg-type]
            )
        at, hk, bk, xs = picked["of"]
        which = picked["which"]

        def forward(p: Params) -> Tensor:  # each path's outputs on its own stored inputs
            return torch.func.vmap(lambda pk, h, c, x: adapter.forward({**h, **pk, **c}, x))(
                p, hk, bk, xs
            )

        def tangent(u: Tensor) -> Tensor:  # P at each path's point, as its own operator has
            if euclidean:
                return u
            return torch.stack(
                [
                    space.flatten(
                        group[j].problem.manifold.proju(group[j].params, space.unflatten(uj))
                    )
                    for j, uj in zip(which, u, strict=True)
                ]
            )

        n = len(which)
        chunks = torch.split(tangent(v), list(space.numels), dim=1)
        vs = {m: c.reshape(n, *s) for m, c, s in zip(names, chunks, space.shapes, strict=True)}
        gv = metric.mvp_paths(forward, at, vs)
        return tangent(torch.cat([gv[m].reshape(n, -1) for m in names], dim=1))

    was = adapter.model.training
    adapter.train(False)
    try:
        yield matvec
    finally:
        adapter.train(was)


def outputs(group: Sequence[EvalRequest]) -> list[list[Tensor]]:
    """Every request's eval-mode outputs on each of its splits, one vmapped forward per
    batch of rows for all paths together."""
    first = group[0]
    params = {n: torch.stack([r.params[n] for r in group]) for n in first.params}
    rest = {n: torch.stack([r.rest[n] for r in group]) for n in first.rest}
    adapter = first.adapter
    stacked = torch.func.vmap(lambda p, b, xi: adapter.forward({**p, **b}, xi))
    per_path: list[list[Tensor]] = [[] for _ in group]
    was = adapter.model.training
    adapter.train(False)  # as each path's evaluator does (models here compute alike in both)
    try:
        with torch.no_grad():
            for s, x0 in enumerate(first.inputs):
                bs, n = first.batch_size, I.length(x0)
                out = torch.cat(  # the K paths' rows stacked one batch at a time
                    [
                        stacked(
                            params,
                            rest,
                            _stack([I.narrow(r.inputs[s], i, i + bs) for r in group]),
                        )
                        for i in range(0, n, bs)
                    ],
                    dim=1,
                )
                for k in range(len(group)):
                    per_path[k].append(out[k])
    finally:
        adapter.train(was)
    return per_path


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
    #: how many of its steps ("step"), their solves ("solve": CG solves and Lanczos runs)
    #: and its evaluations ("evaluate") were stacked with others'
    stacked: dict[str, int] = field(default_factory=dict)


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
    pending: dict[int, Any] = {}  # each waiting walk's request
    started: set[int] = set()
    stacked: list[dict[str, int]] = [{"step": 0, "evaluate": 0, "solve": 0} for _ in walks]
    trouble = Trouble(say)  # stackings failed in a row, per key

    def advance(i: int, answer: Any) -> None:
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

    try:
        for i in range(len(walks)):
            advance(i, None)
        while pending:
            # every group advances each round: paths at their steps stack whatever step each
            # is at, so a path that drifted apart (another chunk length, a rollback) still
            # stacks its steps; its evaluations stack when they meet the others'
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, r in pending.items():
                groups.setdefault(r.key, []).append(i)
            for key, members in groups.items():
                answers: list[Any] = [None] * len(members)
                failed: Exception | None = None
                if len(members) > 1 and not trouble.given_up(key):
                    group = [pending[i] for i in members]
                    try:
                        answers = list(type(group[0]).stacked(group, trouble))
                    except Exception as exc:  # this round each path computes its own
                        failed = exc
                for i, answer in zip(members, answers, strict=True):
                    stacked[i][key[0]] += answer is not None
                    stacked[i]["solve"] += getattr(answer, "solved", None) is not None
                    advance(i, answer)
                if failed is None and answers[0] is not None:
                    trouble.managed(key)
                elif failed is not None and not any(
                    i in outcomes and outcomes[i].error for i in members
                ):
                    # every path managed alone: it is the stacking (vmap's limits, the
                    # memory of K paths). Twice in a row: alone from then on. (A path's own
                    # error ends that path alone, and the others stack again.)
                    trouble.failed(key, failed, len(members))
    finally:
        for i, walk in enumerate(walks):
            if i not in outcomes:
                try:
                    walk.close()  # each run's own cleanup (locks, loggers, loader workers)
                except Exception as exc:  # the others still get theirs
                    say(f"lockstep: closing run {i} failed: {type(exc).__name__}: {exc}")
    return [outcomes[i] for i in range(len(walks))]
