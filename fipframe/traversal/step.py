"""One step's problem: the batches, the fused forward and the terms an integrator minimises.

Every objective's batch and the stored inputs of the divergence go through the network in
one concatenated forward (key by key for named inputs), so a FIP step costs what a replay
step with the same total batch costs. Objectives whose batches share a ``key`` share one slice
of that forward. Models whose output depends on train/eval mode give the stored inputs their
own eval-mode forward instead: the anchor outputs were computed in eval mode. With
``run.autocast: bf16`` this training forward runs under ``torch.autocast`` (bfloat16) and its
outputs return to the run's dtype before any loss; the metric's own forward
(``stored_forward``, the products and solves of geometric steps) never does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fipframe.core.integrator import Split, StepProblem, Terms
from fipframe.core.params import Params
from fipframe.data import inputs as I
from fipframe.data.memory import Memory
from fipframe.errors import TraversalError
from fipframe.traversal.build import Components, Stage
from fipframe.traversal.ranks import averaged_metric


def make_problem(
    comp: Components,
    st: Stage,
    memory: Memory,
    step: int,
    progress: float,
    sink: list[Params] | None = None,
    held: Params | None = None,
) -> StepProblem:
    """The :class:`StepProblem` of step ``step`` of stage ``st`` (``progress`` = step / steps).

    ``sink``, if given, receives the Riemannian gradient the integrator follows (observers).
    ``held``: parameters fixed in this stage; the problem is then posed over the others
    alone (the integrator's point, gradients and solves never see the held ones).
    """
    batches = [o.sample(step) for o in st.objectives]
    # one forward per distinct batch: objectives whose batches share a key share its logits
    inputs: list[I.Inputs] = []
    slot: list[int | None] = []  # per objective: its batch's place in ``inputs``
    placed: dict[Any, int] = {}
    for obj, b in zip(st.objectives, batches, strict=True):
        if b is None:
            slot.append(None)
        elif b.key is not None and b.key in placed:
            shared = inputs[placed[b.key]]
            if I.signature(b.inputs) != I.signature(shared) or I.length(b.inputs) != I.length(
                shared
            ):
                raise TraversalError(
                    f"objective {obj.config.kind}: batch key {b.key!r} names rows "
                    f"{I.describe(shared)}, but its inputs are {I.describe(b.inputs)}; equal keys "
                    "must hold the same inputs"
                )
            slot.append(placed[b.key])
        else:
            if b.key is not None:
                placed[b.key] = len(inputs)
            slot.append(len(inputs))
            inputs.append(b.inputs)
    mem_x: I.Inputs | None = None
    mem_ref = None
    stored = 0  # stored inputs of the step, every process's together
    if st.stored is not None:
        idx = st.stored.indices(step)
        mem_x, mem_ref = I.take(memory.inputs, idx), st.anchor_ref[idx]  # type: ignore[arg-type,index]
        stored = st.stored.batch_size
    weights = [o.weight(progress) for o in st.objectives]
    wants_div = mem_x is not None and st.integrator.uses_divergence
    fuse = st.fused and wants_div
    parts_in = inputs + ([mem_x] if fuse else [])  # type: ignore[list-item]
    _check_concatenable(parts_in, st)
    sizes = [I.length(x) for x in parts_in]
    adapter, metric, ranks = comp.adapter, st.metric, comp.ranks

    def whole(p: Params) -> Params:
        return p if held is None else {**held, **p}

    cast = comp.config.run.autocast == "bf16"
    train_forward = comp.train_forward or adapter.forward  # compiled with run.compile

    def forward(p: Params, x: I.Inputs) -> Tensor:
        """The training forward: under bf16 autocast if asked, outputs in the run's dtype."""
        if not cast:
            return train_forward(p, x)
        with torch.autocast(comp.device.type, dtype=torch.bfloat16):
            out = train_forward(p, x)
        return out.to(comp.dtype)

    everything = I.cat(parts_in) if sizes else None

    def terms(p: Params, out: Tensor | None) -> Terms:
        """The terms at the whole point ``p`` from the training forward's outputs ``out``."""
        logits: list[Tensor | None] = list(torch.split(out, sizes)) if out is not None else []
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
                mem_logits = forward(p, mem_x)  # type: ignore[arg-type]
                adapter.train(True)
            divergence = metric.divergence(mem_logits, mem_ref).mean()
        return Terms(total, divergence, parts, stored if wants_div else 0)  # type: ignore[arg-type]

    def evaluate(p: Params) -> Terms:
        p = whole(p)
        return terms(p, forward(p, everything) if everything is not None else None)

    def stored_forward(p: Params) -> Tensor:
        """Outputs on this step's stored inputs, in eval mode like the anchor's (and in the
        run's dtype: metric products and solves never run under autocast)."""
        was = adapter.model.training
        adapter.train(False)
        try:
            return adapter.forward(whole(p), mem_x)  # type: ignore[arg-type]
        finally:
            adapter.train(was)

    # lockstep paths stack the forward of several paths: only where it is the step's only one
    one_forward = fuse or not wants_div
    return StepProblem(
        evaluate,
        comp.manifold,
        averaged_metric(metric, ranks),
        progress,
        stored_forward if mem_x is not None else None,
        sink.append if sink is not None else None,
        ranks.mean if ranks.parallel else None,
        split=Split(everything, forward, terms, whole, mem_x) if one_forward else None,
    )


def _check_concatenable(parts: list[I.Inputs], st: Stage) -> None:
    """Inputs forwarded together must agree in keys and per-example shapes."""
    if len(parts) < 2:
        return
    first = I.signature(parts[0])
    for x in parts[1:]:
        if I.signature(x) != first:
            raise TraversalError(
                f"stage {st.cfg.name}: inputs forwarded together differ: {I.describe(parts[0])} "
                f"and {I.describe(x)}; every task and the memory must give inputs of the same "
                "keys and per-example shapes (pad sequences to one length)"
            )
