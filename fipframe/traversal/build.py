"""Building a traversal's parts: components once per run, a :class:`Stage` per stage.

:func:`build_components` turns a validated config, and optionally a user's own ``nn.Module``
(``model=``) and data (``data=``), into :class:`Components`: the tasks on the device, the
adapter, the manifold and an :class:`~fipframe.eval.measure.Evaluator`. A registered kind in the
config and an object passed from Python go through the same path from here on.
:func:`build_stage` builds one stage's integrator, metric and objectives, binds the objectives
and caches the anchor outputs on the stored inputs. Benches and plugins use both directly.
"""

from __future__ import annotations

import fnmatch
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fipframe.core.objective import StageContext
from fipframe.core.params import Params
from fipframe.data import inputs as I
from fipframe.data.memory import Memory
from fipframe.data.sampling import Sampler
from fipframe.data.task import TaskSequence
from fipframe.errors import ConfigError, TraversalError
from fipframe.eval.measure import Evaluator
from fipframe.traversal.ranks import Ranks

_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.modules.dropout._DropoutNd)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TraversalError(f"run.device: {name!r} requested but CUDA is not available")
    return device


@dataclass
class Components:
    """What every stage of a run shares."""

    config: Any
    registry: Any
    pm: Any
    device: torch.device
    dtype: torch.dtype
    tasks: TaskSequence
    adapter: Any
    manifold: Any
    evaluator: Evaluator
    #: the output depends on train/eval mode (BatchNorm, dropout): stored inputs get their own
    #: eval-mode forward instead of sharing the objectives' one
    mode_dependent: bool
    #: where the model and data came from: "config" or "python" (recorded in the run)
    model_source: str = "config"
    data_source: str = "config"
    #: the processes walking this path together (one: ``Ranks()``)
    ranks: Ranks = field(default_factory=Ranks)
    #: ``(params, inputs) -> outputs`` of each step's training forward: the adapter's own, or
    #: its torch.compile'd form (``run.compile``)
    train_forward: Any = None


@dataclass
class Stage:
    """The built components of one stage."""

    cfg: Any
    integrator: Any
    metric: Any
    objectives: list[Any]
    anchor_ref: Tensor | None
    stored: Sampler | None
    fused: bool
    #: the batch sources objectives opened (closed at the stage end: loader workers stop)
    sources: dict[Any, Any] = field(default_factory=dict)
    #: the parameters this stage moves when it holds some fixed (``moves``/``holds``); None: all
    moving: tuple[str, ...] | None = None

    def part(self, params: Params) -> Params:
        """The parameters the integrator moves."""
        return params if self.moving is None else {n: params[n] for n in self.moving}

    def held(self, params: Params) -> Params | None:
        """The parameters held fixed in this stage (None when every one moves)."""
        if self.moving is None:
            return None
        keep = set(self.moving)
        return {n: v.detach() for n, v in params.items() if n not in keep}

    def close(self) -> None:
        for source in self.sources.values():
            source.close()


def build_components(
    config: Any,
    *,
    pm: Any,
    registry: Any,
    model: Any = None,
    data: Any = None,
    reopen: bool = False,
    ranks: Ranks | None = None,
) -> Components:
    """Tasks, adapter, manifold and evaluator for ``config``, on its device and dtype.

    ``model``: an ``nn.Module`` or an :class:`~fipframe.core.adapter.ArchitectureAdapter`
    instead of the config's ``model:``. ``data``: a ``TaskSequence``, per-task tensors or
    per-task Datasets (see :func:`fipframe.data.user.task_sequence`) instead of ``data:``.
    ``reopen``: for a finished run's directory (export), whose points hold every weight: the
    start point (``run.init``) and the objectives' targets are not read again.
    ``ranks``: the data-parallel processes of a traversal (:class:`Traversal` passes them);
    without, the components are this process's alone, whatever torchrun set.
    """
    rs = config.run
    device = resolve_device(rs.device)
    ranks = ranks or Ranks()
    device = ranks.device(device)
    if rs.autocast == "bf16":
        if device.type == "mps":
            raise ConfigError("run.autocast: bf16 is not supported on mps; use autocast off")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            raise ConfigError(
                f"run.autocast: bf16 needs a GPU with bfloat16 ({name} has none); use autocast off"
            )
    dtype = getattr(torch, rs.dtype)
    torch.manual_seed(rs.seed)
    if data is None:
        if config.data is None:
            raise ConfigError(
                "data: no data kind in the config and no data= given; set data.kind (see "
                "`fipframe plugins`) or pass data= to fipframe.build/run"
            )

        def build() -> Any:
            return registry.build("dataset", config.data, seed=rs.seed)

        if ranks.parallel:  # rank 0 first, so that a download happens once
            first = ranks.on_main(build)
            tasks = first if ranks.main else build()
        else:
            tasks = build()
        from fipframe.data.user import check

        check(tasks)  # a dataset plugin's tasks pass the same checks as data from Python
    else:
        from fipframe.data.user import task_sequence

        tasks = task_sequence(data, loader=rs.loader)
    n = len(tasks.tasks)
    if beyond := [
        f"{where}[{i}].task: {s.task} is out of range; the data has {n} tasks (0..{n - 1})"
        for where, stages in config.all_stages()
        for i, s in enumerate(stages)
        if s.task is not None and s.task >= n
    ] + [
        f"memory.learned: task {t} is out of range; the data has {n} tasks (0..{n - 1})"
        for t in config.memory.learned
        if t >= n
    ]:
        raise ConfigError(beyond)
    if rs.stream:
        from fipframe.data.stream import stream_tasks

        tasks = stream_tasks(tasks, rs.loader)
    tasks = tasks.to(device, dtype)
    if model is None:
        if config.model is None:
            raise ConfigError(
                "model: no model kind in the config and no model= given; set model.kind (see "
                "`fipframe plugins`) or pass model= (an nn.Module) to fipframe.build/run"
            )
        adapter = registry.build(
            "adapter", config.model, input_shape=tasks.input_shape, num_classes=tasks.num_classes
        )
    else:
        from fipframe.core.adapter import ArchitectureAdapter

        if isinstance(model, ArchitectureAdapter):
            adapter = model
        else:
            globs = tuple(getattr(config.model, "traversable", ("*",)))
            frozen = tuple(getattr(config.model, "frozen", ()))
            adapter = pm.hook.fipframe_resolve_adapter(
                model=model, traversable=globs, frozen=frozen
            )
            if adapter is None:
                raise ConfigError(
                    f"model: no plugin adapts a {type(model).__name__}; pass a torch.nn.Module "
                    "or a fipframe.ArchitectureAdapter"
                )
    stale = rs.init is not None and not reopen and not start(adapter, rs.init)
    adapter.to(device, dtype)
    check_output(adapter, tasks)
    for where, stages in config.all_stages():
        for i, s in enumerate(stages):
            moving_names(adapter.names, s)  # a stage that would move nothing fails here
            for j, o in enumerate(s.objectives):
                check = getattr(registry.spec("objective", o.kind).factory, "check", None)
                if check is not None and not reopen:
                    check(o, adapter, f"{where}[{i}].objectives[{j}]")
    manifold = registry.build("manifold", config.manifold)
    manifold.bind(list(adapter.names))
    mode_dependent = any(_mode_dependent(m) for m in adapter.model.modules())
    evaluator = Evaluator(adapter, tasks, rs, ranks)
    if stale:  # a start point without BatchNorm statistics: recomputed before they are used
        evaluator.mark_stale()
    return Components(
        config,
        registry,
        pm,
        device,
        dtype,
        tasks,
        adapter,
        manifold,
        evaluator,
        mode_dependent,
        "config" if model is None else "python",
        "config" if data is None else "python",
        ranks,
        compiled(adapter) if rs.compile else adapter.forward,
    )


def compiled(adapter: Any) -> Any:
    """``adapter.forward`` through torch.compile; a failure to compile says what to do."""
    fast = torch.compile(adapter.forward)

    def forward(params: Params, x: Any) -> Tensor:
        try:
            return fast(params, x)
        except Exception as exc:
            if not type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            said = " ".join(str(exc).split())[:400]
            raise TraversalError(
                f"run.compile: torch.compile failed on {type(adapter.model).__name__} "
                f"({type(exc).__name__}: {said}); set run.compile: false (the same forward "
                "runs eagerly)"
            ) from exc

    return forward


def start(adapter: Any, ref: str) -> bool:
    """Put the point ``ref`` (``run.init``) into the module: every traversable weight, and the
    frozen weights and buffers the point holds. False when it holds no buffers (BatchNorm
    statistics must then be recomputed)."""
    from fipframe.eval.points import check_like, load_module, read_point

    point = read_point(ref)
    model = adapter.model
    others = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    check_like(point, adapter.params(), "run.init", known=others)
    load_module(model, point)
    return bool(point.buffers)


def _mode_dependent(module: nn.Module) -> bool:
    """BatchNorm, or dropout that drops something (p = 0 computes the same in both modes)."""
    if isinstance(module, (nn.Dropout, nn.modules.dropout._DropoutNd)):
        return float(module.p) > 0.0
    return isinstance(module, _MODE_DEPENDENT)


def check_output(adapter: Any, tasks: TaskSequence) -> None:
    """The model must map a batch of the tasks' inputs to logits [batch, num_classes]."""
    split = tasks.tasks[0].train
    x = split.gather(torch.arange(min(2, len(split))))
    name = type(adapter.model).__name__
    was = adapter.model.training
    adapter.train(False)
    try:
        with torch.no_grad():
            out = adapter.forward(adapter.params(), x)
    except Exception as exc:  # the user's forward: any failure is a mismatch with the data
        raise ConfigError(
            f"model: {name} failed on a batch of task 0's inputs {I.describe(x)}: "
            f"{type(exc).__name__}: {exc}"
            + (
                " (named inputs are passed as keyword arguments: forward(self, "
                + ", ".join(x)
                + "))"
                if I.is_mapping(x)
                else ""
            )
            + (
                "; the inputs are integers: images stored as 8-bit need converting to float "
                "(data.normalize: scale or standardize for npz files)"
                if isinstance(x, Tensor) and not x.is_floating_point()
                else ""
            )
        ) from exc
    finally:
        adapter.train(was)
    n = tasks.num_classes
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != n:
        got = f"shape {list(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"model: {name} returned {got} on a batch of task 0's inputs {I.describe(x)}; the "
            f"tasks have {n} classes, so it must return logits of shape [batch, {n}] (or an "
            "object whose .logits has that shape)"
        )


def stage_seed(seed: int, branch: str, si: int) -> int:
    """The seed of every sampler of stage ``si`` of ``branch``: batches depend on it alone."""
    return zlib.crc32(f"{seed}/{branch}/{si}".encode())


def build_stage(
    comp: Components,
    branch: str,
    si: int,
    cfg: Any,
    anchor: Params,
    memory: Memory,
    ends: list[tuple[int | None, Params]],
    carry: dict[str, Tensor],
) -> Stage:
    """One stage's integrator, metric and bound objectives, and its cached anchor outputs."""
    reg = comp.registry
    integrator = reg.build("integrator", cfg.integrator)
    metric = reg.build("metric", cfg.metric) if cfg.metric is not None else None
    objectives = [reg.build("objective", o) for o in cfg.objectives]
    key = stage_seed(comp.config.run.seed, branch, si)

    ranks = comp.ranks

    def sampler(name: str, n: int, batch_size: int) -> Sampler:
        try:
            return Sampler(
                n,
                batch_size,
                seed=key,
                name=name,
                device=comp.device,
                shard=(ranks.rank, ranks.world),
            )
        except ValueError as exc:
            raise ConfigError(f"{branch}/{cfg.name}: {exc}") from None

    sources: dict[tuple[str, int, int], Any] = {}

    def batches(name: str, split: Any, batch_size: int) -> Any:
        key = (name, id(split), batch_size)
        if key not in sources:
            sources[key] = split.batches(sampler(name, len(split), batch_size))
        return sources[key]

    task = comp.tasks.tasks[cfg.task] if cfg.task is not None else None
    ctx = StageContext(
        comp.tasks,
        task,
        memory,
        comp.adapter,
        cfg.batch_size,
        cfg.memory_batch,
        sampler,
        cfg.steps,
        anchor,
        list(ends),
        carry,
        metric,
        cfg.task,
        comp.evaluator.logits,
        batches,
    )
    for objective in objectives:
        objective.bind(ctx)
    anchor_ref, stored = None, None
    if metric is not None and len(memory):
        # the outputs to preserve on the fixed stored inputs: computed once, in eval mode
        if cfg.anchor == "stored":
            anchor_ref = metric.reference(memory.logits)
        else:
            anchor_ref = metric.reference(comp.evaluator.logits(anchor, memory.inputs))
        stored = sampler("stored_inputs", len(memory), cfg.memory_batch)
    return Stage(
        cfg,
        integrator,
        metric,
        objectives,
        anchor_ref,
        stored,
        fused=not comp.mode_dependent,
        sources=sources,
        moving=moving_names(comp.adapter.names, cfg),
    )


def moving_names(names: Any, cfg: Any) -> tuple[str, ...] | None:
    """The traversable names stage ``cfg`` moves (its ``moves`` minus ``holds``); None: all."""
    moves = getattr(cfg, "moves", None)
    holds = tuple(getattr(cfg, "holds", ()))
    if moves is None and not holds:
        return None
    for which, globs in (("moves", moves or ()), ("holds", holds)):
        if idle := [g for g in globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]:
            raise ConfigError(
                f"stage {cfg.name}: {which} {idle} match no traversable parameter; they are: "
                + ", ".join(list(names)[:8])
                + (" ..." if len(names) > 8 else "")
            )
    chosen = tuple(
        n
        for n in names
        if (moves is None or any(fnmatch.fnmatchcase(n, g) for g in moves))
        and not any(fnmatch.fnmatchcase(n, g) for g in holds)
    )
    if not chosen:
        listed = ", ".join(list(names)[:8]) + (" ..." if len(names) > 8 else "")
        raise ConfigError(
            f"stage {cfg.name}: moves {list(moves) if moves is not None else ['*']} minus holds "
            f"{list(holds)} match no traversable parameter; they are: {listed}"
        )
    return None if len(chosen) == len(names) else chosen
