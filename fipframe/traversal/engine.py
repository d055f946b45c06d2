"""The scheduler: builds every component from a RunConfig and walks the path.

A run is a list of shared ``stages`` (the trunk) followed by named ``branches`` that each
continue from the trunk's last point. Each stage takes ``steps`` integrator steps. Every
``run.chunk`` steps the engine evaluates every task, fires ``fipframe_chunk_end``, feeds the
loggers and commits a checkpoint; this is the only place it syncs with the device.

Sparsity is path state: a stage's ``prune:`` sets boolean masks (by weight magnitude, on the
device), which the engine keeps in the path's carry under ``mask:<name>`` and applies after
every step of every later stage, so pruned weights stay zero through fine-tuning, rewinding and
branches. BatchNorm running statistics belong to the module, not to a point, so the engine
recomputes them whenever the weights jump: after hard pruning, when a stage starts from a
rewound point or a branch starts, and on resume.
"""

from __future__ import annotations

import math
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from fipframe.core.integrator import StepProblem, Terms
from fipframe.core.objective import StageContext
from fipframe.core.params import Params, all_finite, norm, sub_tree
from fipframe.core.sparsity import (
    SparsityConfig,
    apply_masks,
    count,
    counted,
    groups_for,
    intersect,
    magnitude_masks,
    masks_in,
    store_masks,
)
from fipframe.data.memory import Memory
from fipframe.data.sampling import Sampler
from fipframe.errors import TraversalError
from fipframe.eval.results import RunResult
from fipframe.traversal.artifact import RunDir, load_point

TRUNK = "trunk"
_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.modules.dropout._DropoutNd)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TraversalError(f"run.device: {name!r} requested but CUDA is not available")
    return device


@dataclass
class Position:
    """Where the traversal is: branch, stage index and name, next step within the stage."""

    branch: str = TRUNK
    stage: int = 0
    stage_name: str = ""
    step: int = 0


@dataclass
class _Resume:
    params: Params
    state: Any
    meta: dict[str, Any]


@dataclass
class _Stage:
    """The built components of one stage."""

    cfg: Any
    integrator: Any
    metric: Any
    objectives: list[Any]
    anchor_ref: Tensor | None
    stored: Sampler | None
    fused: bool


class Traversal:
    """A built traversal. ``run()`` walks it and returns a :class:`RunResult`."""

    def __init__(
        self,
        config: Any,
        *,
        pm: Any,
        registry: Any,
        out: str | Path | None = None,
        model: nn.Module | None = None,
    ):
        self.config = config
        self.pm = pm
        self.registry = registry
        rs = config.run
        self.device = resolve_device(rs.device)
        self.dtype = getattr(torch, rs.dtype)
        self.dir = RunDir(out) if out is not None else None
        self.position = Position()
        torch.manual_seed(rs.seed)
        self.tasks = registry.build("dataset", config.data, seed=rs.seed).to(
            self.device, self.dtype
        )
        if model is None:
            self.adapter = registry.build(
                "adapter",
                config.model,
                input_shape=self.tasks.input_shape,
                num_classes=self.tasks.num_classes,
            )
        else:
            globs = tuple(getattr(config.model, "traversable", ("*",)))
            self.adapter = pm.hook.fipframe_resolve_adapter(model=model, traversable=globs)
        self.adapter.to(self.device, self.dtype)
        self._class_table = self.tasks.class_table()
        self.mode_dependent = any(
            isinstance(m, _MODE_DEPENDENT) for m in self.adapter.model.modules()
        )
        self.manifold = registry.build("manifold", config.manifold)
        self.manifold.bind(list(self.adapter.names))
        self._bn = [
            m
            for m in self.adapter.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self._bn_stale = False
        self.loggers: list[Any] = []
        self._seq = 0
        self._t0 = time.monotonic()
        self._last_line = 0.0

    # -- public ----------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> RunResult:
        """Walk every stage of the trunk and of each branch; resume from the checkpoint if asked."""
        if resume and self.dir is None:
            raise TraversalError("resume needs the run directory (out=...) to resume from")
        if self.dir is not None:
            self.dir.create(fresh=not resume)
        self._records: list[dict[str, Any]] = []
        restart = self._load_resume() if resume else None
        if self.dir is not None and not resume:
            self.dir.write_text("config.yaml", yaml.safe_dump(self.config.dump(), sort_keys=False))
            self.dir.write_json("plugins.json", self._plugin_versions())
        if self.dir is not None:
            self.loggers = [
                self.registry.build("logger", c, run_dir=self.dir.root) for c in self.config.loggers
            ]
        self.pm.hook.fipframe_traversal_start(run=self)
        try:
            self._walk(restart)
        finally:
            for logger in self.loggers:
                logger.close()
        result = RunResult.from_records(
            self._records, self.tasks, self.dir.root if self.dir else None
        )
        if self.dir is not None:
            result.save()
        self.pm.hook.fipframe_traversal_end(run=self, result=result)
        return result

    # -- walking ---------------------------------------------------------------------------
    def _plan(self) -> list[tuple[str, list[Any]]]:
        return [(TRUNK, list(self.config.stages))] + [
            (name, list(stages)) for name, stages in self.config.branches.items()
        ]

    def _walk(self, restart: _Resume | None) -> None:
        mem_cfg = self.config.memory
        trunk_memory = Memory(mem_cfg.size, mem_cfg.selection, seed=self.config.run.seed)
        trunk_end: Params | None = None
        trunk_ends: list[tuple[int | None, Params]] = []
        trunk_carry: dict[str, Tensor] = {}
        trunk_named: dict[str, Params] = {}  # end points by stage name (for start_from)
        plan = self._plan()
        order = [b for b, _ in plan]
        resume_at = (restart.meta["branch"], restart.meta["stage"]) if restart else None
        for branch, stages in plan:
            if branch == TRUNK:
                memory, params, ends, carry = trunk_memory, self.adapter.params(), [], {}
                named: dict[str, Params] = {}
            else:
                assert trunk_end is not None
                memory, params = trunk_memory.copy(), trunk_end
                ends, carry, named = list(trunk_ends), dict(trunk_carry), dict(trunk_named)
                self._bn_stale = bool(self._bn)  # the module's statistics are another branch's
            first = 0
            if resume_at is not None:
                if order.index(branch) < order.index(resume_at[0]):  # finished before
                    self._add_tasks(memory, branch, stages)
                    if branch == TRUNK:
                        trunk_ends = self._ends_from_disk(branch, stages)
                        trunk_end = trunk_ends[-1][1] if trunk_ends else self.adapter.params()
                        trunk_carry = self._carry_from_disk(branch, stages)
                        trunk_named = {
                            s.name: e for s, (_, e) in zip(stages, trunk_ends, strict=True)
                        }
                    continue
                assert restart is not None
                first = resume_at[1]
                self._add_tasks(memory, branch, stages[:first])
                done = self._ends_from_disk(branch, stages[:first])
                ends += done
                named.update({s.name: e for s, (_, e) in zip(stages[:first], done, strict=True)})
                carry = dict(restart.state.get("carry", {}))
                self._bn_stale = bool(self._bn)
            for si in range(first, len(stages)):
                start = None
                if resume_at is not None:  # the stage that was interrupted
                    assert restart is not None and self.dir is not None
                    start, resume_at = restart, None
                    params = load_point(self.dir.root / restart.meta["anchor"], self.device)
                elif stages[si].start_from is not None:  # rewinding (lottery tickets)
                    params = named[stages[si].start_from]
                    self._bn_stale = bool(self._bn)
                params = self._run_stage(
                    branch, si, stages[si], params, memory, start, ends=ends, carry=carry
                )
                self._add_tasks(memory, branch, stages[si : si + 1], params)
                ends.append((stages[si].task, params))
                named[stages[si].name] = params
            if branch == TRUNK:
                trunk_end, trunk_ends, trunk_carry, trunk_named = params, ends, carry, named

    def _add_tasks(
        self, memory: Memory, branch: str, stages: list[Any], params: Params | None = None
    ) -> None:
        """Store the tasks of finished stages, with the outputs at each stage's end point.

        ``params`` is the end point of the (single) stage just run; when replaying finished
        stages on resume, each end point is read back from the run directory.
        """
        for stage in stages:
            if stage.task is None or stage.task in memory.seen:
                continue
            end = params if params is not None else self._stage_end_params(branch, stage.name)
            memory.add_task(
                stage.task, self.tasks.tasks[stage.task], lambda x, p=end: self._logits(p, x)
            )

    def _stage_end_params(self, branch: str, stage: str) -> Params:
        for r in self._records:
            if r["kind"] == "stage_end" and r["branch"] == branch and r["stage"] == stage:
                assert self.dir is not None
                return load_point(self.dir.root / r["point"], self.device)
        raise TraversalError(f"cannot resume: no saved end point of {branch}/{stage}")

    def _ends_from_disk(self, branch: str, stages: list[Any]) -> list[tuple[int | None, Params]]:
        return [(stage.task, self._stage_end_params(branch, stage.name)) for stage in stages]

    def _carry_from_disk(self, branch: str, stages: list[Any]) -> dict[str, Tensor]:
        """The path state after a branch's last stage, read back from its saved file."""
        if not stages:
            return {}
        last = stages[-1].name
        for r in self._records:
            if r["kind"] == "stage_end" and r["branch"] == branch and r["stage"] == last:
                if not r.get("carry"):
                    return {}
                assert self.dir is not None
                return dict(load_point(self.dir.root / r["carry"], self.device))
        raise TraversalError(f"cannot resume: no saved end point of {branch}/{last}")

    def _load_resume(self) -> _Resume:
        assert self.dir is not None
        params, state, meta = self.dir.load_checkpoint(self.device)
        self.dir.truncate_records(meta["seq"])
        self._records = list(self.dir.records())
        self._seq = meta["seq"] + 1
        return _Resume(params, state, meta)

    # -- one stage -------------------------------------------------------------------------
    def _build_stage(
        self,
        branch: str,
        si: int,
        cfg: Any,
        anchor: Params,
        memory: Memory,
        ends: list[tuple[int | None, Params]],
        carry: dict[str, Tensor],
    ) -> _Stage:
        reg = self.registry
        integrator = reg.build("integrator", cfg.integrator)
        metric = reg.build("metric", cfg.metric) if cfg.metric is not None else None
        objectives = [reg.build("objective", o) for o in cfg.objectives]
        seed = self.config.run.seed

        def sampler(name: str, n: int, batch_size: int) -> Sampler:
            key = zlib.crc32(f"{seed}/{branch}/{si}".encode())
            return Sampler(n, batch_size, seed=key, name=name, device=self.device)

        task = self.tasks.tasks[cfg.task] if cfg.task is not None else None
        ctx = StageContext(
            self.tasks,
            task,
            memory,
            self.adapter,
            cfg.batch_size,
            cfg.memory_batch,
            sampler,
            cfg.steps,
            anchor,
            list(ends),
            carry,
            metric,
            cfg.task,
            self._logits,
        )
        for objective in objectives:
            objective.bind(ctx)
        anchor_ref, stored = None, None
        if metric is not None and len(memory):
            # the outputs to preserve on the fixed stored inputs: computed once, in eval mode
            if cfg.anchor == "stored":
                anchor_ref = metric.reference(memory.logits)
            else:
                anchor_ref = metric.reference(self._logits(anchor, memory.inputs))
            stored = sampler("stored_inputs", len(memory), cfg.memory_batch)
        return _Stage(
            cfg, integrator, metric, objectives, anchor_ref, stored, fused=not self.mode_dependent
        )

    def _problem(
        self,
        st: _Stage,
        memory: Memory,
        step: int,
        progress: float,
        sink: list[Params] | None = None,
    ) -> StepProblem:
        batches = [o.sample(step) for o in st.objectives]
        # one forward per distinct batch: objectives whose batches share a key share its logits
        inputs: list[Tensor] = []
        slot: list[int | None] = []  # per objective: its batch's place in ``inputs``
        placed: dict[Any, int] = {}
        for obj, b in zip(st.objectives, batches, strict=True):
            if b is None:
                slot.append(None)
            elif b.key is not None and b.key in placed:
                if b.inputs.shape != inputs[placed[b.key]].shape:
                    raise TraversalError(
                        f"objective {obj.config.kind}: batch key {b.key!r} names rows of shape "
                        f"{tuple(inputs[placed[b.key]].shape)}, but its inputs have shape "
                        f"{tuple(b.inputs.shape)}; equal keys must hold the same inputs"
                    )
                slot.append(placed[b.key])
            else:
                if b.key is not None:
                    placed[b.key] = len(inputs)
                slot.append(len(inputs))
                inputs.append(b.inputs)
        mem_x = mem_ref = None
        if st.stored is not None:
            idx = st.stored.indices(step)
            mem_x, mem_ref = memory.inputs[idx], st.anchor_ref[idx]  # type: ignore[index]
        weights = [o.weight(progress) for o in st.objectives]
        wants_div = mem_x is not None and st.integrator.uses_divergence
        fuse = st.fused and wants_div
        sizes = [x.shape[0] for x in inputs] + ([mem_x.shape[0]] if fuse else [])  # type: ignore[union-attr]
        adapter, metric = self.adapter, st.metric

        def evaluate(p: Params) -> Terms:
            logits: list[Tensor | None] = []
            if sizes:
                everything = torch.cat(inputs + ([mem_x] if fuse else []))  # type: ignore[list-item]
                logits = list(torch.split(adapter.forward(p, everything), sizes))
            parts: dict[str, Tensor] = {}
            total: Tensor | None = None
            for obj, batch, w, k in zip(st.objectives, batches, weights, slot, strict=True):
                term = obj.loss(p, logits[k] if k is not None else None, batch)
                name = obj.config.kind
                parts[name] = parts[name] + term if name in parts else term
                total = w * term if total is None else total + w * term
            if total is None:
                total = next(iter(p.values())).new_zeros(())
            divergence = None
            if wants_div:
                if fuse:
                    mem_logits = logits[-1]
                else:
                    adapter.train(False)
                    mem_logits = adapter.forward(p, mem_x)
                    adapter.train(True)
                divergence = metric.divergence(mem_logits, mem_ref).mean()
            return Terms(total, divergence, parts)

        def stored_forward(p: Params) -> Tensor:
            """Outputs on this step's stored inputs, in eval mode like the anchor's."""
            was = adapter.model.training
            adapter.train(False)
            try:
                return adapter.forward(p, mem_x)  # type: ignore[arg-type]
            finally:
                adapter.train(was)

        return StepProblem(
            evaluate,
            self.manifold,
            metric,
            progress,
            stored_forward if mem_x is not None else None,
            sink.append if sink is not None else None,
        )

    def _run_stage(
        self,
        branch: str,
        si: int,
        cfg: Any,
        params: Params,
        memory: Memory,
        resume: _Resume | None,
        *,
        ends: list[tuple[int | None, Params]],
        carry: dict[str, Tensor],
    ) -> Params:
        # the stage starts on the manifold (a no-op for Euclidean; a resumed anchor already is)
        # and with the path's pruned weights at zero
        masks = masks_in(carry)
        if resume is None:
            params = apply_masks(self.manifold.projx(params), masks)
            if self._bn_stale:
                self.recompute_batchnorm(params, cfg)
        anchor = params
        anchor_rel = self._stage_start_point(branch, si, cfg, anchor, resume)
        st = self._build_stage(branch, si, cfg, anchor, memory, ends, carry)
        observers = [o for o in st.objectives if o.observes_steps]
        refreshers = [o for o in st.objectives if o.refresh_every]
        prune = cfg.prune
        groups = (
            groups_for(prune, self.adapter.prune_groups(), params, f"{branch}/{cfg.name}.prune")
            if prune is not None
            else []
        )

        def hard_prune(p: Params, sparsity: float) -> Params:
            """Masks at ``sparsity`` by magnitude (pruned weights stay pruned), applied."""
            nonlocal masks
            assert prune is not None
            masks = intersect(magnitude_masks(p, prune, sparsity, groups), masks)
            store_masks(carry, masks)
            return apply_masks(p, masks)

        def full_state(integrator_state: Any) -> dict[str, Any]:
            return {
                "integrator": integrator_state,
                "objectives": [o.state_dict() for o in st.objectives],
                "carry": carry,
            }

        def restore_objectives(states: list[dict[str, Tensor]]) -> None:
            for objective, sd in zip(st.objectives, states, strict=True):
                objective.load_state_dict(sd)

        if resume is not None:
            params, state, step, scale = (
                resume.params,
                resume.state["integrator"],
                resume.meta["step"],
                resume.meta["scale"],
            )
            restore_objectives(resume.state["objectives"])
            rollbacks = resume.meta.get("rollbacks", 0)
            lengths = resume.meta.get("lengths", [0.0, 0.0])
            if self._bn_stale:
                self.recompute_batchnorm(params, cfg)
        else:
            state, step, scale, rollbacks = st.integrator.init(params), 0, 1.0, 0
            lengths = [0.0, 0.0]  # metric (geodesic) and Euclidean length travelled
            # a checkpoint from the very start: an interruption before the first chunk resumes here
            self._commit(branch, si, 0, params, full_state(state), scale, rollbacks, anchor_rel)
        self.position = Position(branch, si, cfg.name, step)
        chunk = self.config.run.chunk
        good = (params, state, step, [o.state_dict() for o in st.objectives], dict(masks))
        sums: dict[str, Tensor] = {}
        count = 0
        if resume is not None and resume.meta.get("done"):
            return params  # the stage had finished before the interruption
        train_metrics: dict[str, float] = {}
        sink: list[Params] | None = [] if observers else None
        with self._progress(branch, cfg, step) as bar:
            self.adapter.train(True)
            while step < cfg.steps:
                if prune is not None and prune.every and step % prune.every == 0:
                    params = hard_prune(params, prune.target(step / cfg.steps))
                for objective in refreshers:
                    if step % objective.refresh_every == 0:
                        objective.refresh(params, step)
                problem = self._problem(st, memory, step, step / cfg.steps, sink)
                before = params
                params, state, stats = st.integrator.step(params, state, problem, scale)
                if masks:
                    params = apply_masks(params, masks)
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
                values = torch.stack([sums[k].float() for k in names])
                finite = bool(torch.isfinite(values).all() & all_finite(params))  # one sync
                if not finite:
                    rollbacks += 1
                    if rollbacks > self.config.run.max_rollbacks:
                        raise TraversalError(
                            f"{branch}/{cfg.name}: non-finite values at step {step} after "
                            f"{rollbacks - 1} rollbacks; lower the step size"
                        )
                    params, state, step, kept, masks = good
                    restore_objectives(kept)
                    store_masks(carry, masks)
                    scale *= 0.5
                    sums, count = {}, 0
                    self._line(
                        f"{branch}/{cfg.name}: non-finite values; rolled back to step "
                        f"{step}, step scale now {scale:g}"
                    )
                    continue
                train_metrics = dict(zip(names, (values / count).tolist(), strict=True))
                train_metrics["step_scale"] = scale
                train_metrics.update(self._path_measures(st, memory, good[0], params, lengths))
                train_metrics.update(self._sparsity_measures(st, params, masks, step / cfg.steps))
                sums, count = {}, 0
                good = (params, state, step, [o.state_dict() for o in st.objectives], dict(masks))
                self.position.step = step
                bar.update(step - bar.n)
                if step == cfg.steps:
                    break  # the stage-end record below carries this chunk
                metrics = {**train_metrics, **self.evaluate(params)}
                point = None
                every = self.config.run.save_every
                if self.dir is not None and every and step % every == 0:
                    point = self._save(branch, si, cfg, step, params)
                record = self._emit("chunk", branch, si, cfg, step, metrics, point)
                self._commit(
                    branch,
                    si,
                    step,
                    params,
                    full_state(state),
                    scale,
                    rollbacks,
                    anchor_rel,
                    lengths=lengths,
                )
                self._notify(record)
                bar.set_postfix_str(_short(metrics, cfg.task))
                self._maybe_line(branch, cfg, step, metrics)
        for objective in st.objectives:
            objective.finish(params, carry)
        if prune is not None:  # hard projection onto the final mask
            params = hard_prune(params, prune.sparsity)
            self.recompute_batchnorm(params, cfg)
        if masks:
            train_metrics.update(self._sparsity_measures(st, params, masks, 1.0))
        metrics = {**train_metrics, **self.evaluate(params)}
        point = carry_rel = None
        if self.dir is not None:
            point = self._save(branch, si, cfg, cfg.steps, params, tag="end")
            if carry:
                carry_rel = self._save(branch, si, cfg, cfg.steps, carry, tag="carry")
        record = self._emit(
            "stage_end", branch, si, cfg, cfg.steps, metrics, point, carry=carry_rel
        )
        done_state = {"integrator": {}, "objectives": [{} for _ in st.objectives], "carry": carry}
        self._commit(
            branch, si, cfg.steps, params, done_state, scale, rollbacks, anchor_rel, done=True
        )
        self._notify(record)
        self._line(f"{branch}/{cfg.name}: done. " + _short(metrics, cfg.task))
        return params

    def _stage_start_point(
        self, branch: str, si: int, cfg: Any, anchor: Params, resume: _Resume | None
    ) -> str | None:
        if self.dir is None:
            return None
        if resume is not None:
            return resume.meta["anchor"]
        return self._save(branch, si, cfg, 0, anchor, tag="start")

    # -- evaluation, events, persistence ---------------------------------------------------
    def _path_measures(
        self,
        st: _Stage,
        memory: Memory,
        prev: Params,
        params: Params,
        lengths: list[float],
    ) -> dict[str, float]:
        """Drift and the lengths travelled since the last chunk, on the first
        ``run.measure_inputs`` stored inputs.

        ``lengths`` ([metric, Euclidean]) is updated in place. One metric-vector product and one
        forward on those inputs per chunk; nothing if the stage has no metric.
        """
        n = self.config.run.measure_inputs
        if st.anchor_ref is None or memory.inputs is None or n == 0:
            return {}
        from fipframe.eval.geometry import segment_length

        x = memory.inputs[:n]
        was = self.adapter.model.training
        self.adapter.train(False)
        forward = lambda p: self.adapter.forward(p, x)  # noqa: E731
        step_len = segment_length(st.metric, forward, prev, params)
        with torch.no_grad():
            drift = st.metric.divergence(forward(params), st.anchor_ref[: len(x)]).mean()
        self.adapter.train(was)
        euclid = norm(sub_tree(params, prev))
        seg, d, e = torch.stack([step_len, drift, euclid]).tolist()
        lengths[0] += seg
        lengths[1] += e
        return {"path/length": lengths[0], "path/euclidean": lengths[1], "path/drift": d}

    def _sparsity_measures(
        self, st: _Stage, params: Params, masks: dict[str, Tensor], progress: float
    ) -> dict[str, float]:
        """Zeros among the counted weights; for a soft target, the accuracy of its projection.

        ``sparsity`` counts the tensors the stage's ``prune:`` (or ``prune_target``) counts,
        or the masked ones; ``projected/...`` is the accuracy the network would have if
        projected onto the current target mask here (the accuracy along a FIP path).
        """
        targets = [o for o in st.objectives if isinstance(o.config, SparsityConfig)]
        # a soft target's schedule is the one the path follows; a stage's prune: counts else
        spec = targets[0].config if targets else st.cfg.prune
        names = counted(params, spec) if spec is not None else list(masks)
        if not names:
            return {}
        c = count(params, names)
        out = {"sparsity": c.sparsity, "params/nonzero": float(c.nonzero)}
        if spec is not None:
            out["sparsity/target"] = spec.target(progress)
        target_masks = getattr(targets[0], "masks", None) if targets else None
        if target_masks and progress < 1.0:
            projected = apply_masks(params, target_masks)
            accs = self.evaluate(projected)
            out.update({f"projected/{k}": v for k, v in accs.items() if k.endswith("average")})
        return out

    def recompute_batchnorm(self, params: Params, cfg: Any) -> None:
        """Recompute BatchNorm running statistics of ``params`` from ``run.bn_batches`` training
        batches of the stage's task (cumulative mean), as after a hard prune or a rewind."""
        self._bn_stale = False
        n = self.config.run.bn_batches
        if not self._bn or not n:
            return
        task = self.tasks.tasks[cfg.task if cfg.task is not None else 0]
        x = task.train.x
        g = torch.Generator().manual_seed(self.config.run.seed)
        idx = torch.randperm(len(x), generator=g)[: n * cfg.batch_size].to(x.device)
        momenta = [m.momentum for m in self._bn]
        for m in self._bn:
            m.reset_running_stats()
            m.momentum = None
        was = self.adapter.model.training
        self.adapter.train(True)
        try:
            with torch.no_grad():
                for chunk in idx.split(cfg.batch_size):
                    self.adapter.forward(params, x[chunk])
        finally:
            self.adapter.train(was)
            for m, momentum in zip(self._bn, momenta, strict=True):
                m.momentum = momentum

    def _logits(self, params: Params, x: Tensor) -> Tensor:
        bs = self.config.run.eval_batch_size
        was = self.adapter.model.training
        self.adapter.train(False)
        with torch.no_grad():
            out = torch.cat(
                [self.adapter.forward(params, x[i : i + bs]) for i in range(0, len(x), bs)]
            )
        self.adapter.train(was)
        return out

    def evaluate(self, params: Params) -> dict[str, float]:
        """Accuracy of ``params`` on every task's val and test split, and their averages."""
        names, values = [], []
        table = self._class_table
        for split in ("val", "test"):
            for i, task in enumerate(self.tasks.tasks):
                data = getattr(task, split)
                if len(data) == 0:
                    continue
                pred = self.tasks.restrict(self._logits(params, data.x), i, table).argmax(-1)
                names.append(f"acc/{split}/task_{i}")
                values.append((pred == data.y).float().mean())
        out = dict(zip(names, torch.stack(values).tolist(), strict=True)) if values else {}
        n = len(self.tasks.tasks)
        for split in ("val", "test"):
            accs = [
                out[f"acc/{split}/task_{i}"] for i in range(n) if f"acc/{split}/task_{i}" in out
            ]
            if accs:
                out[f"acc/{split}/average"] = sum(accs) / len(accs)
        return out

    def _emit(
        self,
        kind: str,
        branch: str,
        si: int,
        cfg: Any,
        step: int,
        metrics: dict[str, float],
        point: str | None,
        carry: str | None = None,
    ) -> dict[str, Any]:
        record = {
            "seq": self._seq,
            "kind": kind,
            "branch": branch,
            "stage": cfg.name,
            "stage_index": si,
            "task": cfg.task,
            "step": step,
            "global_step": self._global_step(branch, si, step),
            "point": point,
            "time": round(time.monotonic() - self._t0, 3),
            "metrics": metrics,
        }
        if carry is not None:
            record["carry"] = carry
        self._seq += 1
        self._records.append(record)
        if self.dir is not None:
            self.dir.append_record(record)
        return record

    def _notify(self, record: dict[str, Any]) -> None:
        """Loggers and hooks hear of a record only after it is committed, so an exception or
        Ctrl-C raised by one of them loses nothing."""
        for logger in self.loggers:
            logger.log(record)
        self.pm.hook.fipframe_chunk_end(
            run=self, step=record["global_step"], metrics=record["metrics"]
        )

    def _commit(
        self,
        branch: str,
        si: int,
        step: int,
        params: Params,
        state: Any,
        scale: float,
        rollbacks: int,
        anchor_rel: str | None,
        done: bool = False,
        lengths: list[float] | None = None,
    ) -> None:
        if self.dir is not None:
            meta = {
                "seq": self._seq - 1,  # the last record this checkpoint covers
                "branch": branch,
                "stage": si,
                "step": step,
                "scale": scale,
                "rollbacks": rollbacks,
                "anchor": anchor_rel,
                "done": done,
                "lengths": lengths or [0.0, 0.0],
            }
            self.dir.commit(params, state, meta)

    def _save(
        self, branch: str, si: int, cfg: Any, step: int, params: Params, tag: str = ""
    ) -> str:
        assert self.dir is not None
        name = f"{branch}-{si:02d}-{cfg.name}-{tag or f'{step:07d}'}"
        meta = {"branch": branch, "stage": cfg.name, "stage_index": si, "step": step}
        return self.dir.save_point(name, params, meta)

    def _global_step(self, branch: str, si: int, step: int) -> int:
        trunk = list(self.config.stages)
        if branch == TRUNK:
            return sum(s.steps for s in trunk[:si]) + step
        stages = self.config.branches[branch]
        return sum(s.steps for s in trunk) + sum(s.steps for s in stages[:si]) + step

    def _plugin_versions(self) -> dict[str, Any]:
        return {
            "torch": torch.__version__,
            "plugins": {
                n: {"dist": s.dist, "version": s.version, "module": s.module}
                for n, s in self.pm.sources.items()
            },
        }

    # -- output ----------------------------------------------------------------------------
    def _mode(self) -> str:
        mode = self.config.run.progress
        if mode == "auto":
            return "bar" if sys.stderr.isatty() else "lines"
        return mode

    @contextmanager
    def _progress(self, branch: str, cfg: Any, start: int) -> Iterator[Any]:
        if self._mode() == "bar":
            from tqdm import tqdm

            with tqdm(
                total=cfg.steps,
                initial=start,
                desc=f"{branch}/{cfg.name}",
                leave=False,
                dynamic_ncols=True,
            ) as bar:
                yield bar
        else:
            yield _NoBar(start)

    def _line(self, text: str) -> None:
        if self._mode() != "off":
            print(text, file=sys.stderr, flush=True)

    def _maybe_line(self, branch: str, cfg: Any, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if self._mode() == "lines" and now - self._last_line >= 10.0:
            self._last_line = now
            self._line(f"{branch}/{cfg.name} step {step}/{cfg.steps} " + _short(metrics, cfg.task))


class _NoBar:
    def __init__(self, n: int):
        self.n = n

    def update(self, k: int) -> None:
        self.n += k

    def set_postfix_str(self, s: str) -> None:
        pass


def _short(metrics: dict[str, float], task: int | None) -> str:
    parts = []
    if "loss/total" in metrics and math.isfinite(metrics["loss/total"]):
        parts.append(f"loss {metrics['loss/total']:.3f}")
    if "loss/divergence" in metrics:
        parts.append(f"div {metrics['loss/divergence']:.4f}")
    accs = sorted(k for k in metrics if k.startswith("acc/test/task_"))
    if accs:
        parts.append("test acc " + " ".join(f"{100 * metrics[k]:.1f}" for k in accs))
    return ", ".join(parts)
