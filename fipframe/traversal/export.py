"""Export the sparse network at the end of a branch of a run.

``export(run_dir, out, branch=...)`` loads the branch's last stage-end point and the masks the
path carries, applies them, restores the BatchNorm statistics saved with that point (or, for
older runs, recomputes them on training batches), and writes:

- ``model.safetensors``: the module's full state dict (weights with zeros in place, buffers);
- ``masks.safetensors``: the boolean masks;
- ``report.json``: real parameter counts (total, nonzero, per tensor), the counted sparsity and
  the test accuracy of the exported module, evaluated afresh;
- with ``structured=True`` and units fully pruned: ``model-structured.safetensors``, the network
  with those units removed (narrower layers), the kept units of each group under ``keep:<group>``
  (see :func:`load_structured`), its parameter count, its forward time against the masked dense
  module, and the largest output difference between the two (zero up to rounding).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fipframe.core.adapter import call
from fipframe.core.sparsity import (
    PruneGroup,
    apply_masks,
    masks_in,
    shrink,
    unit_scores,
    usable_groups,
)
from fipframe.errors import ConfigError, RunDirError
from fipframe.traversal.artifact import RunDir, load_point
from fipframe.traversal.origin import reopen


def _stage_end(run_dir: Path, branch: str | None, stage: str | None) -> dict[str, Any]:
    rd = RunDir(run_dir)
    records = rd.records()
    problems = rd.audit(records, None)  # every file checked, as report and resume do
    if problems:
        raise RunDirError([*problems, f"{run_dir}: cannot export until these are restored"])
    ends = [r for r in records if r["kind"] == "stage_end"]
    if not ends:
        raise ConfigError(f"{run_dir}: no finished stage to export")
    branches = list(dict.fromkeys(r["branch"] for r in ends))
    branch = branch or branches[-1]
    mine = [r for r in ends if r["branch"] == branch and (stage is None or r["stage"] == stage)]
    if not mine:
        what = f"stage {stage!r} of branch {branch!r}" if stage else f"branch {branch!r}"
        raise ConfigError(
            f"{run_dir}: no finished {what}; finished branches: {', '.join(branches)}"
        )
    return mine[-1]


def _forward_ms(model: nn.Module, x: Any, reps: int = 20) -> float:
    with torch.no_grad():
        call(model, x)
        t0 = time.perf_counter()
        for _ in range(reps):
            call(model, x)
    return 1000 * (time.perf_counter() - t0) / reps


def _unit_keeps(params: dict[str, Tensor], groups: list[PruneGroup]) -> list[Tensor]:
    """A unit is kept unless every weight it owns is zero."""
    return [unit_scores(params, g) > 0 for g in groups]


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    branch: str | None = None,
    stage: str | None = None,
    structured: bool = False,
    pm: Any = None,
    model: Any = None,
    data: Any = None,
) -> dict[str, Any]:
    """Write the sparse network of ``branch`` (default: the last one run) to ``out``.

    A run whose model or data came from Python needs the same ``model=`` / ``data=`` again.
    """
    run_dir, out = Path(run_dir), Path(out)
    record = _stage_end(run_dir, branch, stage)
    config, comp = reopen(run_dir, pm=pm, model=model, data=data, verb="export")
    adapter, device, evaluator = comp.adapter, comp.device, comp.evaluator
    params = load_point(run_dir / record["point"], device)
    carry = load_point(run_dir / record["carry"], device) if record.get("carry") else {}
    masks = masks_in(carry)
    params = apply_masks(params, masks)
    adapter.load(params)
    path = config.stages if record["branch"] == "trunk" else config.branches[record["branch"]]
    stage_cfg = next(s for s in path if s.name == record["stage"])
    if record.get("buffers"):  # the statistics the run evaluated this point with
        evaluator.load_buffers(load_point(run_dir / record["buffers"], device))
    else:  # a run from before buffers were saved
        evaluator.recompute_batchnorm(params, stage_cfg.task, stage_cfg.batch_size)
    accuracy = evaluator.evaluate(params).get("acc/test/average")

    model = adapter.model.eval()
    per_tensor = {
        n: {"total": v.numel(), "nonzero": int((v != 0).sum())} for n, v in model.named_parameters()
    }
    total = sum(t["total"] for t in per_tensor.values())
    nonzero = sum(t["nonzero"] for t in per_tensor.values())
    masked_total = sum(per_tensor[n]["total"] for n in masks)
    masked_nonzero = sum(per_tensor[n]["nonzero"] for n in masks)
    report: dict[str, Any] = {
        "run": str(run_dir),
        "branch": record["branch"],
        "stage": record["stage"],
        "test_accuracy": accuracy,
        "params_total": total,
        "params_nonzero": nonzero,
        "masked_tensors": len(masks),
        "masked_sparsity": 1 - masked_nonzero / masked_total if masked_total else 0.0,
        "per_tensor": per_tensor,
    }
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"fipframe": json.dumps(report)})
    save_file({n: m.cpu().contiguous() for n, m in masks.items()}, str(out / "masks.safetensors"))

    if structured:
        groups = usable_groups(adapter.prune_groups(), params)
        if not groups:
            raise ConfigError("export --structured: the model's adapter declares no prune groups")
        keeps = _unit_keeps(params, groups)
        test = comp.tasks.tasks[stage_cfg.task or 0].test
        x = test.gather(torch.arange(min(256, len(test))))
        with torch.no_grad():
            reference = call(model, x)
        dense_ms = _forward_ms(model, x)
        removed = shrink(model, groups, keeps)
        with torch.no_grad():
            diff = float((call(model, x) - reference).abs().max())
        small = sum(v.numel() for v in model.parameters())
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        for g, keep in zip(groups, keeps, strict=True):
            state[f"keep:{g.name}"] = keep.cpu()
        report["structured"] = {
            "params_total": small,
            "params_nonzero": sum(int((v != 0).sum()) for v in model.parameters()),
            "units": {name: {"before": b, "after": a} for name, (b, a) in removed.items()},
            "not_removable": [g.name for g in groups if not g.removable],
            "forward_ms_masked": round(dense_ms, 3),
            "forward_ms_structured": round(_forward_ms(model, x), 3),
            "max_output_difference": diff,
            "device": str(device),
        }
        save_file(state, str(out / "model-structured.safetensors"))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def load_structured(
    config: Any, path: str | Path, *, model: Any = None, data: Any = None
) -> nn.Module:
    """Rebuild a structurally pruned module from its run config and exported file.

    ``model``, ``data``: a fresh instance of the run's own module and its data, for a run whose
    model or data came from Python.
    """
    from fipframe.traversal.build import build_components

    state = load_file(str(path))
    cls = type(config)
    adapter = build_components(
        config, pm=cls.plugin_manager, registry=cls.registry, model=model, data=data
    ).adapter
    groups = adapter.prune_groups()
    by_name = {g.name: g for g in groups}
    chosen = [by_name[k[len("keep:") :]] for k in state if k.startswith("keep:")]
    shrink(adapter.model, chosen, [state[f"keep:{g.name}"] for g in chosen])
    adapter.model.load_state_dict({k: v for k, v in state.items() if not k.startswith("keep:")})
    return adapter.model.eval()
