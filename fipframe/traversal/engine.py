"""The scheduler's facade: a built traversal that walks its paths and returns a RunResult.

A run is a list of shared ``stages`` (the trunk) followed by named ``branches`` that each
continue from the trunk's last point. The work is done by the seams of this package:
:mod:`~fipframe.traversal.build` (components, stages), :mod:`~fipframe.traversal.step` (one
step's problem), :mod:`~fipframe.traversal.loop` (the stage loop and rollback),
:mod:`~fipframe.traversal.pruning`, :mod:`~fipframe.traversal.plan` (trunk, branches, resume),
:mod:`~fipframe.traversal.records` (records and checkpoints),
:mod:`~fipframe.traversal.progress` and :mod:`fipframe.eval.measure`. This class wires them
together, writes the run's description and fires the lifecycle hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from fipframe.errors import RunDirError, TraversalError
from fipframe.eval.results import RunResult, stage_names
from fipframe.plugins import call_hook
from fipframe.traversal import integrity, origin
from fipframe.traversal.artifact import CHANGES, DELIVERED, FIXED, RunDir
from fipframe.traversal.build import Components, build_components, resolve_device
from fipframe.traversal.lockstep import Notes, alone
from fipframe.traversal.lockstep import Walk as LockstepWalk
from fipframe.traversal.loop import StageLoop
from fipframe.traversal.plan import Walk
from fipframe.traversal.progress import Progress
from fipframe.traversal.ranks import Ranks
from fipframe.traversal.records import TRUNK, Position, Records

__all__ = ["TRUNK", "Position", "Traversal", "resolve_device"]


class Traversal:
    """A built traversal. ``run()`` walks it and returns a :class:`RunResult`.

    Args:
        config: a validated RunConfig.
        pm, registry: the plugin manager and registry the config was validated against.
        out: the run directory (None: nothing is written).
        model: an ``nn.Module`` or ``ArchitectureAdapter`` instead of the config's ``model:``.
        data: tasks from Python instead of the config's ``data:`` (see
            :func:`fipframe.data.user.task_sequence`).
    """

    def __init__(
        self,
        config: Any,
        *,
        pm: Any,
        registry: Any,
        out: str | Path | None = None,
        model: nn.Module | Any = None,
        data: Any = None,
    ):
        self.config = config
        self.pm = pm
        self.registry = registry
        ranks = Ranks.from_env(resolve_device(config.run.device))
        # before any other collective: processes with other configs would exchange tensors
        # of other shapes, which aborts them without a word
        ranks.agree("the run's config", integrity.digest(config))
        ranks.check_shares(config)
        self.components: Components = build_components(
            config, pm=pm, registry=registry, model=model, data=data, ranks=ranks
        )
        # every process starts from rank 0's weights, whatever the module's initialisation did
        module = self.components.adapter.model
        ranks.share([t.data for t in module.parameters()] + list(module.buffers()))
        self.dir = RunDir(out) if out is not None else None
        self.position = Position()
        self.loggers: list[Any] = []
        # the global random streams as the build left them: a lockstep walk keeps its own
        self._rng = _rng_state(self.device)

    # -- what hooks and users read -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.components.device

    @property
    def tasks(self) -> Any:
        return self.components.tasks

    @property
    def adapter(self) -> Any:
        return self.components.adapter

    @property
    def manifold(self) -> Any:
        return self.components.manifold

    @property
    def evaluator(self) -> Any:
        return self.components.evaluator

    @property
    def rank(self) -> int:
        """This process's rank among the data-parallel processes (0 alone); hooks that write
        files should do so on rank 0 only."""
        return self.components.ranks.rank

    @property
    def world_size(self) -> int:
        """How many processes walk this path together (1 without torchrun)."""
        return self.components.ranks.world

    def evaluate(self, params: Any) -> dict[str, float]:
        """Accuracy of ``params`` on every task's val and test split, and their averages.

        Under data parallelism each process evaluates everything alone here (a hook may call
        it on rank 0 only); the run's own evaluations share the splits out."""
        return self.components.evaluator.evaluate(params, shared=False)

    # -- running ----------------------------------------------------------------------------------
    def run(
        self, *, resume: bool = False, force: bool = False, overrides: Iterable[str] = ()
    ) -> RunResult:
        """Walk every stage of the trunk and of each branch; resume from the checkpoint if asked.

        On resume the checkpoint must belong to the run directory and the config must be the
        one it was made with, except for the fields named in ``overrides`` (``PATH=VALUE`` as
        given to ``--set``) or, with ``force``, any field but the interrupted stage's step rule
        (see :mod:`fipframe.traversal.integrity`); every file the run needs is checked first.
        """
        return alone(self.walk(resume=resume, force=force, overrides=overrides))

    def walk(
        self,
        *,
        resume: bool = False,
        force: bool = False,
        overrides: Iterable[str] = (),
        notes: Notes | None = None,
    ) -> LockstepWalk:
        """:meth:`run` as a generator, for :func:`fipframe.traversal.lockstep.run_together`:
        with ``notes`` it yields every step it can share; it returns the RunResult."""
        if resume and self.dir is None:
            raise TraversalError("resume needs the run directory (out=...) to resume from")
        ranks = self.components.ranks
        if notes is not None and ranks.parallel:
            raise TraversalError(
                "lockstep paths run in one process; a data-parallel run (torchrun, --nproc) "
                "walks its path alone"
            )
        if notes is not None:  # interleaved with other walks: keep this run's random streams
            return (yield from self._own_rng(self._walk(resume, force, overrides, notes)))
        return (yield from self._walk(resume, force, overrides, notes))

    def _walk(
        self, resume: bool, force: bool, overrides: Iterable[str], notes: Notes | None
    ) -> LockstepWalk:
        ranks = self.components.ranks
        ranks.agree("resuming", bool(resume))
        if self.dir is None:
            return (
                yield from self._run(
                    None, resume=False, force=force, overrides=overrides, notes=notes
                )
            )
        rd = self.dir
        ranks.on_main(lambda: rd.create(fresh=not resume))  # rank 0 takes the run's lock
        try:
            return (
                yield from self._run(
                    rd, resume=resume, force=force, overrides=overrides, notes=notes
                )
            )
        finally:
            rd.unlock()

    def _own_rng(self, walk: LockstepWalk) -> LockstepWalk:
        """``walk`` with the global random streams (dropout, random augmentations) its own:
        restored whenever it runs, kept whenever it yields, as if it ran alone."""
        state, answer = self._rng, None
        try:
            while True:
                _set_rng_state(state, self.device)
                try:
                    offer = walk.send(answer)
                except StopIteration as stop:
                    return stop.value
                finally:
                    state = _rng_state(self.device)
                answer = yield offer
        finally:
            walk.close()

    def _run(
        self,
        rd: RunDir | None,
        *,
        resume: bool,
        force: bool,
        overrides: Iterable[str],
        notes: Notes | None,
    ) -> LockstepWalk:
        ranks = self.components.ranks
        records = Records(self.config, rd, self.device, write=ranks.main)
        restart = None
        progress = Progress(self.config.run.progress if ranks.main else "off")
        if notes is not None:  # runs walking together: lines that name the run, not K bars
            progress = Progress("lines" if progress.mode == "bar" else progress.mode, notes.label)
        if rd is not None and resume:
            # rank 0 checks the directory and cuts its records back to the checkpoint; the
            # others then read what it left (they write nothing)
            checked = ranks.on_main(
                lambda: self._check_resume(rd, records, progress, overrides, force)
            )
            if ranks.main:
                assert checked is not None
                tensors, meta = checked
            else:
                tensors, meta = records.read_restart()
            # every process holds the same checkpoint before rank 0 writes the next one
            ranks.agree("the checkpoint to resume from", (meta["seq"], meta.get("run_id")))
            origin.restore_fixed(rd.root, self.components)
            restart = records.restart(tensors, meta)
            if ranks.parallel and self.device.type == "cuda" and "rng/cuda0" in tensors:
                # every process draws the same random stream: rank 0's own device's state is
                # where this process's device would be (the others in the file are idle GPUs)
                torch.cuda.set_rng_state(tensors["rng/cuda0"].cpu(), self.device)
            rid = integrity.run_id(rd) or meta.get("run_id")
            world = int(meta.get("world", 1))
            if world != ranks.world:
                progress.line(
                    f"note: resumed by {ranks.world} process(es); the run had {world}. The "
                    "processes share one global batch, so the path is the same unless the "
                    "model draws random numbers (dropout)"
                )
        elif rd is not None:
            rid = ranks.same(ranks.on_main(lambda: self._start_dir(rd)))
        if rd is not None:
            records.stamp = {**integrity.stamp(self.config, rid), "world": ranks.world}
            for note in rd.notes:
                progress.line(f"note: {note}")
            if ranks.main:
                if restart is not None:
                    self._build_loggers(rd)
                    self._replay(rd, records.items)
                elif self.loggers:
                    rd.write_json(DELIVERED, {"seq": -1})  # nothing given to the sinks yet
        loop = StageLoop(self.components, records, progress, self._notify, self.position, notes)
        self._hook("fipframe_traversal_start", run=self)
        try:
            yield from Walk(self.components, records, loop).run(restart)
        finally:
            for logger in self.loggers:
                logger.close()
        result = RunResult.from_records(
            records.items, self.tasks, rd.root if rd else None, plan=stage_names(self.config)
        )
        result.points = dict(records.ends)
        result.fixed = self._fixed()
        if rd is not None:
            # also the others' barrier: none returns before rank 0 has written the end
            ranks.on_main(result.save)
        self._hook("fipframe_traversal_end", run=self, result=result)
        return result

    def _check_resume(
        self,
        rd: RunDir,
        records: Records,
        progress: Progress,
        overrides: Iterable[str],
        force: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read the checkpoint and check that it, the config and the files belong together."""
        tensors, meta = records.read_restart(lambda meta: integrity.check_run(rd, meta))
        changes = integrity.check(rd, self.config, meta, overrides=overrides, force=force)
        origin.check(rd.root, origin.read(rd.root), self.components)
        problems = rd.audit(records.items, meta)
        if problems:
            raise RunDirError([*problems, f"{rd.root}: cannot resume until these are restored"])
        if changes:
            integrity.record(rd, self.config, meta, changes, overrides, force)
            progress.line(f"config changed on resume ({len(changes)} fields; {CHANGES})")
        return tensors, meta

    def _start_dir(self, rd: RunDir) -> str:
        """A fresh run's description: config, plugin versions, origin, fixed parameters."""
        self._build_loggers(rd)  # a logger refusing its file stops the run before it writes
        rd.write_text("config.yaml", yaml.safe_dump(self.config.dump(), sort_keys=False))
        rd.write_json("plugins.json", self._plugin_versions())
        origin.write(rd.root, self.components)
        if self._fixed():  # parameters no path moves: saved once, for load_into and export
            rd.save_point(Path(FIXED).stem, self._fixed(), {"kind": "fixed"})
        return integrity.start(rd)

    def _build_loggers(self, rd: RunDir) -> None:
        self.loggers = [
            self.registry.build("logger", c, run_dir=rd.root) for c in self.config.loggers
        ]

    def _replay(self, rd: RunDir, items: list[dict[str, Any]]) -> None:
        """Give the loggers the committed records they did not get (killed between a commit
        and its notification): a sink never loses rows."""
        delivered = rd.delivered(items[-1]["seq"] if items else -1)  # checked by the audit
        if not self.loggers or not items or delivered is None:
            return  # no record of deliveries: a run from before they were kept
        for logger in self.loggers:
            logger.replay(items, delivered)
        rd.write_json(DELIVERED, {"seq": items[-1]["seq"]})

    def _fixed(self) -> dict[str, Any]:
        """The module's parameters that are not traversable (frozen), as they are."""
        moving = set(self.adapter.names)
        return {
            n: p.detach().clone()
            for n, p in self.adapter.model.named_parameters()
            if n not in moving
        }

    def _notify(self, record: dict[str, Any]) -> None:
        """Loggers and hooks hear of a record only after it is committed, so an exception or
        Ctrl-C raised by one of them loses nothing."""
        for logger in self.loggers:
            logger.log(record)
        if self.loggers and self.dir is not None:
            self.dir.write_json(DELIVERED, {"seq": record["seq"]})
        self._hook(
            "fipframe_chunk_end", run=self, step=record["global_step"], metrics=record["metrics"]
        )

    def _hook(self, name: str, **kwargs: Any) -> None:
        where = f" {self.dir.root}" if self.dir is not None else " DIR"
        saved = (
            "; the run is saved up to its last chunk: fix the plugin or disable it "
            f"(FIPFRAME_DISABLE_PLUGINS), then resume with --resume{where}"
        )
        call_hook(self.pm, name, TraversalError, saved, **kwargs)

    def _plugin_versions(self) -> dict[str, Any]:
        return {
            "torch": torch.__version__,
            "plugins": {
                n: {"dist": s.dist, "version": s.version, "module": s.module}
                for n, s in self.pm.sources.items()
            },
        }


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    if device.type == "cuda":
        return torch.random.get_rng_state(), torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.random.get_rng_state(), torch.mps.get_rng_state()
    return torch.random.get_rng_state(), None


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)
    elif state[1] is not None and device.type == "mps":
        torch.mps.set_rng_state(state[1])
