"""The stage loop: steps in chunks, one host sync per chunk, rollback to the last good state.

Every ``run.chunk`` steps the loop checks the chunk's statistics and the weights for
non-finite values (one sync). A finite chunk becomes the new :class:`LastGood` and is
evaluated, recorded, committed to the checkpoint and then announced to loggers and hooks; a
non-finite one returns to the last good state and halves the step, up to ``run.max_rollbacks``
times. The stage's pruner (:mod:`fipframe.traversal.pruning`) is called around every step.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fipframe.core.params import Params, all_finite
from fipframe.data.memory import Memory
from fipframe.errors import TraversalError
from fipframe.traversal.build import Components, Stage, build_stage
from fipframe.traversal.guard import Guard
from fipframe.traversal.lockstep import Notes, eval_request, request
from fipframe.traversal.progress import Progress, short
from fipframe.traversal.pruning import Pruner
from fipframe.traversal.records import TRUNK, Commit, Position, Records, Restart
from fipframe.traversal.step import make_problem


@dataclass
class LastGood:
    """The last point whose chunk was finite, with everything needed to continue from it."""

    params: Params
    state: Any  # the integrator's
    step: int
    objectives: list[dict[str, Tensor]]  # each objective's state_dict
    masks: dict[str, Tensor]
    buffers: dict[str, Tensor]  # the module's (BatchNorm statistics)


class StageLoop:
    """Runs stages of a path; shares the run's records, progress display and position.

    ``notify(record)`` tells loggers and hooks of a committed record.
    """

    def __init__(
        self,
        comp: Components,
        records: Records,
        progress: Progress,
        notify: Callable[[dict[str, Any]], None],
        position: Position,
        notes: Notes | None = None,
    ):
        self.comp = comp
        self.records = records
        self.progress = progress
        self.notify = notify
        self.position = position
        #: set when the path runs in lockstep with others: steps are offered for stacking
        self.notes = notes

    def run(
        self,
        branch: str,
        si: int,
        cfg: Any,
        params: Params,
        memory: Memory,
        restart: Restart | None,
        *,
        ends: list[tuple[int | None, Params]],
        carry: dict[str, Tensor],
    ) -> Generator[Any, Any, Params]:
        """Run stage ``si`` of ``branch`` from ``params`` (or from ``restart``); its end point.

        A generator: in lockstep (``notes`` set) it yields each step it can share as a
        :class:`~fipframe.traversal.lockstep.Request` (and each evaluation as an
        ``EvalRequest``) and takes the gradient (the outputs) sent back."""
        comp, rec, ev = self.comp, self.records, self.comp.evaluator
        ranks = comp.ranks
        buffers = list(comp.adapter.model.buffers())
        where = f"{branch}/{cfg.name}"
        label = self.progress.label(branch, cfg.name)
        pruner = Pruner(cfg, carry, comp.adapter.prune_groups, params, where)
        # the stage starts on the manifold (a no-op for Euclidean; a resumed anchor already is)
        # and with the path's pruned weights at zero
        if restart is None:
            params = pruner.start(comp.manifold.projx(params))
            if ev.bn_stale:
                ev.recompute_batchnorm(params, cfg.task, cfg.batch_size)
        anchor = params
        if restart is not None:
            anchor_rel = restart.meta["anchor"]
            anchor_buffers = restart.meta.get("anchor_buffers")
            if anchor_buffers:  # the anchor outputs are computed with the stage start's buffers
                ev.load_buffers(rec.load(anchor_buffers))
        else:
            anchor_rel = rec.save(branch, si, cfg, 0, anchor, tag="start")
            start_buffers = ev.buffers()
            anchor_buffers = (
                rec.save(branch, si, cfg, 0, start_buffers, tag="start-buffers")
                if start_buffers
                else None
            )
        st = build_stage(comp, branch, si, cfg, anchor, memory, ends, carry)
        observers = [o for o in st.objectives if o.observes_steps]
        refreshers = [o for o in st.objectives if o.refresh_every]

        def full_state(integrator_state: Any, buffers: dict[str, Tensor]) -> dict[str, Any]:
            return {
                "integrator": integrator_state,
                "objectives": [o.state_dict() for o in st.objectives],
                "carry": carry,
                "buffers": buffers,  # BatchNorm statistics move with the weights
            }

        def restore_objectives(states: list[dict[str, Tensor]]) -> None:
            for objective, sd in zip(st.objectives, states, strict=True):
                objective.load_state_dict(sd)

        if restart is not None:
            params, state = restart.params, restart.state["integrator"]
            step, scale = restart.meta["step"], restart.meta["scale"]
            restore_objectives(restart.state["objectives"])
            rollbacks = restart.meta.get("rollbacks", 0)
            lengths = restart.meta.get("lengths", [0.0, 0.0])
            if "buffers" in restart.state:  # the statistics the interrupted run had here
                ev.load_buffers(restart.state["buffers"])
                ev.bn_stale = False
            elif ev.bn_stale:  # a checkpoint from before buffers were saved
                ev.recompute_batchnorm(params, cfg.task, cfg.batch_size)
        else:
            state, step, scale, rollbacks = st.integrator.init(st.part(params)), 0, 1.0, 0
            lengths = [0.0, 0.0]  # metric (geodesic) and Euclidean length travelled
            # a checkpoint from the very start: an interruption before the first chunk resumes here
            rec.commit(
                params,
                Commit(
                    branch,
                    si,
                    0,
                    full_state(state, ev.buffers()),
                    anchor=anchor_rel,
                    anchor_buffers=anchor_buffers,
                ),
            )
        self.position.move(branch, si, cfg.name, step)
        chunk = comp.config.run.chunk

        def last_good(params: Params, state: Any, step: int) -> LastGood:
            objectives = [o.state_dict() for o in st.objectives]
            return LastGood(params, state, step, objectives, pruner.snapshot(), ev.buffers())

        good = last_good(params, state, step)
        sums: dict[str, Tensor] = {}
        count = 0
        if restart is not None and restart.meta.get("done"):
            return params  # the stage had finished before the interruption
        learned = {t for t, _ in ends if t is not None} | ({cfg.task} - {None})
        guard = Guard(
            comp.config.run.guard,
            comp.tasks,
            learned,
            restart.meta.get("guard_ref") if restart is not None else None,
            self._path_before(branch),
        )
        train_metrics: dict[str, float] = {}
        sink: list[Params] | None = [] if observers else None

        def roll_back(reason: str) -> None:
            nonlocal params, state, step, scale, rollbacks, sums, count
            params, state, step, scale, rollbacks = self._roll_back(
                where, reason, step, good, state, scale, rollbacks, pruner, restore_objectives
            )
            sums, count = {}, 0

        offering = True  # steps are offered for stacking (lockstep) until one is not taken
        solving = True  # and their declared solves, likewise
        try:
            self.progress.advance(branch, cfg.name, step)  # the run's clock starts here
            with self.progress.bar(label, cfg.steps, step) as bar:
                comp.adapter.train(True)
                while step < cfg.steps:
                    params = pruner.before_step(params, step, cfg.steps)
                    for objective in refreshers:
                        if step % objective.refresh_every == 0:
                            objective.refresh(params, step)
                    problem = make_problem(
                        comp, st, memory, step, step / cfg.steps, sink, st.held(params)
                    )
                    before = params
                    at = st.part(params)
                    offer = None
                    if self.notes is not None and offering:
                        offer = request(
                            comp, st.integrator, problem, at, where, self.notes, solving, state
                        )
                        if offer is not None:
                            problem.given = yield offer
                    moved, state, stats = st.integrator.step(at, state, problem, scale)
                    if offer is not None and problem.given is not None:  # sent, not taken
                        offering = False
                        self.notes.alone(  # type: ignore[union-attr]
                            where,
                            f"integrator {type(st.integrator).__name__} did not take the "
                            "stacked gradient (its riemannian_gradient is at another point or "
                            "weight than its lockstep_loss says)",
                        )
                    elif offer is not None and problem.solved is not None:  # solve not taken
                        solving = False
                        self.notes.alone(  # type: ignore[union-attr]
                            where,
                            f"integrator {type(st.integrator).__name__} did not take the "
                            "stacked solve (StepProblem.take_solve or take_spectrum with "
                            "the gradient or point it was given and the spec its "
                            "lockstep_solve says)",
                            "solves",
                        )
                    if ranks.parallel and not problem.averaged:
                        _not_averaged(st.integrator, cfg)
                    params = moved if st.moving is None else {**params, **moved}
                    params = pruner.after_step(params)
                    guard.watch(stats)
                    if sink:
                        grad = sink.pop()
                        sink.clear()
                        for objective in observers:
                            objective.observe(before, params, grad)
                    for k, v in stats.items():
                        sums[k] = sums[k] + v if k in sums else v.detach().clone()
                    count += 1
                    step += 1
                    if step % chunk and step != cfg.steps:
                        continue
                    names = list(sums)
                    watched = [guard.pending] if guard.pending is not None else []
                    values = torch.stack([sums[k].float() for k in names] + watched)
                    if ranks.parallel:  # the chunk's statistics over the global batch
                        (values,) = ranks.mean([values])
                        ranks.share(buffers)  # BatchNorm statistics: rank 0's, as DDP does
                    finite = bool(torch.isfinite(values).all() & all_finite(params))  # one sync
                    problem_text = None if finite else "non-finite values"
                    if finite:
                        means = (values[: len(names)] / count).tolist()
                        guard.settle(float(values[-1]) if watched else None)
                        loss = means[names.index("loss/total")] if "loss/total" in names else None
                        problem_text = guard.loss_problem(loss)
                    if problem_text is not None:
                        roll_back(problem_text)
                        continue
                    train_metrics = dict(zip(names, means, strict=True))
                    train_metrics["step_scale"] = scale
                    good_lengths = list(lengths)
                    train_metrics.update(
                        ev.path_measures(
                            st.metric, st.anchor_ref, memory.inputs, good.params, params, lengths
                        )
                    )
                    train_metrics.update(
                        pruner.measures(params, st.objectives, step / cfg.steps, ev.evaluate)
                    )
                    sums, count = {}, 0
                    if step == cfg.steps:
                        good = last_good(params, state, step)
                        self.position.step = step
                        bar.update(step - bar.n)
                        break  # the stage-end record below carries this chunk
                    metrics = {**train_metrics, **(yield from self._evaluate(params, where))}
                    # every process decides as rank 0 does
                    metrics, ev.majority = ranks.same((metrics, ev.majority))
                    problem_text = guard.accuracy_problem(metrics, ev.majority)
                    if problem_text is not None:
                        lengths[:] = good_lengths
                        roll_back(problem_text)
                        continue
                    good = last_good(params, state, step)
                    self.position.step = step
                    bar.update(step - bar.n)
                    every = comp.config.run.save_every
                    point = point_buffers = None
                    if every and step % every == 0:
                        point = rec.save(branch, si, cfg, step, params)
                        if good.buffers:  # the statistics go with the point (paths, members)
                            tag = f"{step:07d}-buffers"
                            point_buffers = rec.save(branch, si, cfg, step, good.buffers, tag=tag)
                    record = rec.emit(
                        "chunk", branch, si, cfg, step, metrics, point, buffers=point_buffers
                    )
                    rec.commit(
                        params,
                        Commit(
                            branch,
                            si,
                            step,
                            full_state(state, good.buffers),
                            scale,
                            rollbacks,
                            anchor_rel,
                            lengths=lengths,
                            anchor_buffers=anchor_buffers,
                            guard_ref=guard.ref,
                        ),
                    )
                    self.notify(record)
                    eta = self.progress.advance(branch, cfg.name, step)
                    text = short(metrics) + (f" | {eta}" if eta else "")
                    bar.set_postfix_str(text)
                    self.progress.chunk(label, step, cfg.steps, text)
            return (
                yield from self._finish(
                    branch,
                    si,
                    cfg,
                    st,
                    pruner,
                    params,
                    carry,
                    train_metrics,
                    Commit(
                        branch,
                        si,
                        cfg.steps,
                        {},
                        scale,
                        rollbacks,
                        anchor_rel,
                        True,
                        anchor_buffers=anchor_buffers,
                    ),
                )
            )
        finally:
            st.close()  # loader workers of streamed data stop here

    def _evaluate(self, params: Params, where: str) -> Generator[Any, Any, dict[str, float]]:
        """The evaluation of ``params``; in lockstep offered for stacking first."""
        outputs = None
        if self.notes is not None:
            offer = eval_request(self.comp, params, where, self.notes)
            if offer is not None:
                outputs = yield offer
        return self.comp.evaluator.evaluate(params, logits=outputs)

    def _path_before(self, branch: str) -> dict[str, float] | None:
        """The metrics at the end of the path's previous stage (None at the path's start)."""
        ends = [
            r
            for r in self.records.items
            if r["kind"] == "stage_end" and r["branch"] in (branch, TRUNK)
        ]
        return ends[-1]["metrics"] if ends else None

    def _roll_back(
        self,
        where: str,
        reason: str,
        step: int,
        good: LastGood,
        state: Any,
        scale: float,
        rollbacks: int,
        pruner: Pruner,
        restore_objectives: Callable[[list[dict[str, Tensor]]], None],
    ) -> tuple[Params, Any, int, float, int]:
        """Back to the last good chunk with the step halved (or stop, as configured)."""
        run = self.comp.config.run
        if reason != "non-finite values" and run.guard.action == "stop":
            raise TraversalError(
                f"{where}: {reason} at step {step}; stopped (run.guard.action: stop). The "
                f"checkpoint holds step {good.step}: lower the step size and resume with "
                "--resume DIR --set PATH=VALUE"
            )
        rollbacks += 1
        if rollbacks > run.max_rollbacks:
            raise TraversalError(
                f"{where}: {reason} at step {step} after {rollbacks - 1} rollbacks; lower the "
                "step size"
            )
        restore_objectives(good.objectives)
        pruner.restore(good.masks)
        self.comp.evaluator.load_buffers(good.buffers)
        scale *= 0.5
        self.progress.line(
            f"{where}: {reason}; rolled back to step {good.step}, step scale now {scale:g}"
        )
        return good.params, good.state, good.step, scale, rollbacks

    def _finish(
        self,
        branch: str,
        si: int,
        cfg: Any,
        st: Stage,
        pruner: Pruner,
        params: Params,
        carry: dict[str, Tensor],
        train_metrics: dict[str, float],
        done: Commit,
    ) -> Generator[Any, Any, Params]:
        """The stage end: objectives record what later stages need, the final hard projection,
        the end point (with carry and buffers) saved, recorded and committed."""
        rec, ev = self.records, self.comp.evaluator
        for objective in st.objectives:
            objective.finish(params, carry)
        params, jumped = pruner.finish(params)
        if jumped:
            ev.recompute_batchnorm(params, cfg.task, cfg.batch_size)
        if pruner.masks:
            train_metrics.update(pruner.measures(params, st.objectives, 1.0, ev.evaluate))
        metrics = self.comp.ranks.same(
            {**train_metrics, **(yield from self._evaluate(params, f"{branch}/{cfg.name}"))}
        )
        point = rec.save(branch, si, cfg, cfg.steps, params, tag="end")
        carry_rel = rec.save(branch, si, cfg, cfg.steps, carry, tag="carry") if carry else None
        # the module's buffers (BatchNorm statistics) as they are at this point, for load_into
        buffers = ev.buffers()
        buffers_rel = (
            rec.save(branch, si, cfg, cfg.steps, buffers, tag="buffers") if buffers else None
        )
        rec.keep_end(branch, cfg.name, params, buffers)
        record = rec.emit(
            "stage_end",
            branch,
            si,
            cfg,
            cfg.steps,
            metrics,
            point,
            carry=carry_rel,
            buffers=buffers_rel,
            start=done.anchor,
            start_buffers=done.anchor_buffers,
        )
        done.state = {
            "integrator": {},
            "objectives": [{} for _ in st.objectives],
            "carry": carry,
            "buffers": buffers,
        }
        rec.commit(params, done)
        self.notify(record)
        self.progress.line(f"{self.progress.label(branch, cfg.name)} done. " + short(metrics))
        return params


def _not_averaged(integrator: Any, cfg: Any) -> None:
    """Under data parallelism a step must see the global batch's gradient."""
    if getattr(integrator, "data_parallel", False):
        return
    raise TraversalError(
        f"stage {cfg.name}: integrator {cfg.integrator.kind} computed its step without "
        "fipframe.core.integrator.riemannian_gradient, so under data parallelism each process "
        "would follow its own share of the batch; run it in one process, or average the "
        "gradient with StepProblem.average and set data_parallel = True on the class"
    )
