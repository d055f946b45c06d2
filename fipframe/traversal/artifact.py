"""The Path artifact: everything a traversal leaves in its run directory.

::

    run_dir/
      config.yaml            the resolved RunConfig
      plugins.json           plugin names, distributions and versions
      metrics.jsonl          one JSON record per chunk and per stage end
      points/NNNNNN-<branch>-<stage>.safetensors
                             saved points: the traversable weights (full tensors, loadable alone)
      points/fixed.safetensors  the parameters no path moves (frozen ones), saved once
      origin.json            what ran: the model's class and parameters, the tasks' sizes
      checkpoint.safetensors the commit record: the last good point + integrator state + RNG
      summary.json, accuracy.png   written at the end (and by ``fipframe report``)

Every file is written atomically (temporary file, fsync, rename). The checkpoint is written
last at each chunk end and is the single source of truth on resume: metrics records past it
are dropped, so a crash at any instant leaves a readable, resumable run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from fipframe.core.params import Params
from fipframe.errors import ConfigError, TraversalError

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
FIXED = "points/fixed.safetensors"  # the module's parameters no path moves (frozen), once


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what a plain open() would give; mkstemp's 0600 hides files


@contextmanager
def _atomic(path: Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_save_tensors(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    cpu: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for k, v in tensors.items():
        t = v.detach().contiguous().cpu()
        # the same tensor may sit in two places of a state (safetensors refuses shared storage)
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        cpu[k] = t.clone() if key in seen and t.numel() else t
        seen.add(key)
    with _atomic(path) as tmp:
        save_file(cpu, tmp, metadata={"fipframe": json.dumps(meta)})


def read_meta(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("fipframe", "{}"))


def _params(tensors: dict[str, Tensor], meta: dict[str, Any]) -> Params:
    """The ``param/`` tensors in their original order (safetensors sorts keys)."""
    names = [k[len("param/") :] for k in tensors if k.startswith("param/")]
    return {name: tensors[f"param/{name}"] for name in meta.get("params") or sorted(names)}


def load_point(path: str | Path, device: str | torch.device = "cpu") -> Params:
    """Load the weights of a saved point (or of the checkpoint) as a Params dict."""
    return _params(load_file(str(path), device=str(device)), read_meta(Path(path)))


# -- nested state <-> flat tensors ------------------------------------------------------------
def flatten_state(state: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Move tensors of a nested dict/list state into ``tensors``; return the JSON skeleton."""
    if isinstance(state, Tensor):
        tensors[prefix] = state
        return {"$tensor": prefix}
    if isinstance(state, dict):
        return {k: flatten_state(v, f"{prefix}.{k}", tensors) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(state)]
    return state


def unflatten_state(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if set(skeleton) == {"$tensor"}:
            return tensors[skeleton["$tensor"]]
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- creation ------------------------------------------------------------------------------
    def create(self, *, fresh: bool) -> None:
        """Make sure the directory can be written; refuse to overwrite an earlier run."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"out: cannot write to {self.root} ({exc.strerror or exc})") from None
        if fresh and (self.root / METRICS).exists():
            raise ConfigError(
                f"out: {self.root} already holds a run; resume it with --resume {self.root} "
                "or choose another --out"
            )

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_bytes(self.root / name, (json.dumps(obj, indent=2) + "\n").encode())

    def write_text(self, name: str, text: str) -> None:
        atomic_write_bytes(self.root / name, text.encode())

    # -- points and records --------------------------------------------------------------------
    def save_point(self, name: str, params: Params, meta: dict[str, Any]) -> str:
        rel = f"points/{name}.safetensors"
        tensors = {f"param/{k}": v for k, v in params.items()}
        atomic_save_tensors(self.root / rel, tensors, dict(meta, params=list(params)))
        return rel

    def append_record(self, record: dict[str, Any]) -> None:
        with (self.root / METRICS).open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        """Complete records in order (a torn last line from a crash is skipped)."""
        path = self.root / METRICS
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue

    def truncate_records(self, last_seq: int) -> None:
        """Keep only records with ``seq <= last_seq`` (those the checkpoint covers)."""
        kept = [r for r in self.records() if r.get("seq", -1) <= last_seq]
        atomic_write_bytes(
            self.root / METRICS, "".join(json.dumps(r) + "\n" for r in kept).encode()
        )

    # -- checkpoint (the commit record) --------------------------------------------------------
    def commit(self, params: Params, state: Any, meta: dict[str, Any]) -> None:
        tensors: dict[str, Tensor] = {f"param/{k}": v for k, v in params.items()}
        meta = dict(meta, params=list(params), state=flatten_state(state, "state", tensors))
        tensors["rng/cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda{i}"] = s
        atomic_save_tensors(self.root / CHECKPOINT, tensors, meta)

    def load_checkpoint(self, device: torch.device) -> tuple[Params, Any, dict[str, Any]]:
        path = self.root / CHECKPOINT
        if not path.exists():
            raise TraversalError(f"{path}: no checkpoint to resume from")
        meta = read_meta(path)
        tensors = load_file(str(path), device="cpu")
        torch.set_rng_state(tensors["rng/cpu"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        moved = {k: v.to(device) for k, v in tensors.items() if not k.startswith("rng/")}
        params = _params(moved, meta)
        state = unflatten_state(meta.pop("state"), moved)
        return params, state, meta
