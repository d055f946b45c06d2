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
      checkpoint.safetensors the commit record: the last good point + integrator state + RNG,
                             the run id and the resolved config it was made with
      run.json               the run's id, when and where it started
      changes.jsonl          every config change accepted on resume (what, when, forced or not)
      delivered.json         the last record every logger was given (rows replayed on resume)
      summary.json, accuracy.png/.svg   written at the end (and by ``fipframe report``)
      .lock                  names the one process writing the run (pid, host); the lock itself
                             is a flock on the directory, held from the first write to the last

Every file is written atomically (temporary file, fsync, rename). The checkpoint is written
last at each chunk end and is the single source of truth on resume: metrics records past it
are dropped, so a crash at any instant leaves a readable, resumable run.

Every safetensors file carries the sha256 of its contents in its metadata
(``fipframe.sha256``: over the tensor index, the fipframe metadata and the data); reading a
file checks it, so a truncated or bit-flipped point is reported as damaged, naming the file,
instead of being used.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from torch import Tensor

from fipframe.core.params import Params
from fipframe.errors import ConfigError, RunDirError

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
FIXED = "points/fixed.safetensors"  # the module's parameters no path moves (frozen), once
RUN = "run.json"
CHANGES = "changes.jsonl"
DELIVERED = "delivered.json"
LOCK = ".lock"
TEMP_SUFFIX = ".tmp"
SHA_KEY = "fipframe.sha256"
FILE_FIELDS = ("point", "carry", "buffers", "start", "start_buffers")  # files records name


def _inside(rel: Any) -> bool:
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        return False
    return ".." not in Path(rel).parts


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what a plain open() would give; mkstemp's 0600 hides files


@contextmanager
def _atomic(path: Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
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
    _write_safetensors(path, cpu, json.dumps(meta))


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _write_safetensors(path: Path, tensors: dict[str, Tensor], meta: str) -> None:
    """The safetensors format (8-byte header length, JSON header, data), written tensor by
    tensor with no in-memory copy of the file, and the checksum in its metadata."""
    header: dict[str, Any] = {}
    views, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: cannot save dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        views.append(memoryview(raw).cast("B") if size else b"")
        offset += size
    header["__metadata__"] = {"fipframe": meta}
    header["__metadata__"][SHA_KEY] = _digest(header, views)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned
    with _atomic(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for v in views:
            f.write(v)


def _digest(header: dict[str, Any], pieces: list[Any]) -> str:
    """sha256 over the tensor index, the fipframe metadata and the sha256 of each tensor's
    bytes, in file order (one pass over the data; written and checked the same way)."""
    index = {k: v for k, v in header.items() if k != "__metadata__"}
    h = hashlib.sha256(json.dumps(index, sort_keys=True).encode())
    h.update(header.get("__metadata__", {}).get("fipframe", "").encode())
    for piece in pieces:
        h.update(hashlib.sha256(piece).digest())
    return h.hexdigest()


def _pieces(header: dict[str, Any], data: memoryview) -> list[memoryview]:
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    return [data[a:b] for a, b in spans]


def read_tensors(
    path: str | Path, *, require_sha: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and fipframe metadata of a safetensors file, its checksum verified.

    Raises RunDirError naming the file if it is missing, truncated, not safetensors, or its
    contents differ from the checksum written with them (``require_sha``: or it has none, as
    every file of a run made by this version has)."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        n = int.from_bytes(blob[:8], "little")
        if len(blob) < 8 or 8 + n > len(blob):
            raise ValueError(f"{len(blob)} bytes, shorter than its header says (truncated)")
        header = json.loads(blob[8 : 8 + n])
        meta_raw = (header.get("__metadata__") or {}).get("fipframe", "{}")
        stored = (header.get("__metadata__") or {}).get(SHA_KEY)
        data = memoryview(blob)[8 + n :]
        if stored is None and require_sha:
            raise ValueError(f"no {SHA_KEY} in its metadata (it was not written by fipframe)")
        if stored is not None and stored != _digest(header, _pieces(header, data)):
            raise ValueError("its contents do not match its sha256 (changed since written)")
        tensors = load_bytes(blob)
        meta = json.loads(meta_raw)
    except Exception as exc:  # safetensors, JSON and UTF-8 errors alike: the file is damaged
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RunDirError(f"{path}: damaged ({why})") from None
    return tensors, meta


def _params(tensors: dict[str, Tensor], meta: dict[str, Any]) -> Params:
    """The ``param/`` tensors in their original order (safetensors sorts keys)."""
    names = [k[len("param/") :] for k in tensors if k.startswith("param/")]
    return {name: tensors[f"param/{name}"] for name in meta.get("params") or sorted(names)}


def load_point(path: str | Path, device: str | torch.device = "cpu") -> Params:
    """Load the weights of a saved point (or of the checkpoint) as a Params dict, checked."""
    tensors, meta = read_tensors(path)
    return _params({k: v.to(device) for k, v in tensors.items()}, meta)


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
        self._lock: Any = None
        #: things noticed while reading that lose nothing but should be said (a torn last line)
        self.notes: list[str] = []

    # -- creation ------------------------------------------------------------------------------
    def create(self, *, fresh: bool) -> None:
        """Make sure the directory can be written and take its lock; refuse to overwrite an
        earlier run, or to write a run another process is writing."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"out: cannot write to {self.root} ({exc.strerror or exc})") from None
        self.lock()
        if fresh and any((self.root / f).exists() for f in (METRICS, CHECKPOINT, RUN)):
            self.unlock()
            raise ConfigError(
                f"out: {self.root} already holds a run; resume it with --resume {self.root} "
                "or choose another --out"
            )
        self.clean_temp()

    def lock(self) -> None:
        """Take the run's exclusive lock (released by the OS if the process dies).

        The lock is on the directory itself, so deleting ``.lock`` cannot let a second writer
        in; ``.lock`` only names the holder for the message the second one gets."""
        fd = _open_for_lock(self.root)
        try:
            _flock(fd)
        except BlockingIOError:
            try:
                holder = (self.root / LOCK).read_text(errors="replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            try:
                who = json.loads(holder)
                text = f"pid {who['pid']} on host {who['host']} (since {who['since']})"
            except (ValueError, KeyError, TypeError):
                text = "another process"
            raise RunDirError(
                f"{self.root}: in use by {text}; wait for it to finish, or stop it, then "
                f"resume with --resume {self.root}"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (self.root / LOCK).write_text(json.dumps(info))
        self._lock = fd

    def busy(self) -> bool:
        """Is another process writing this run now?"""
        if self._lock is not None:
            return False
        try:
            self.lock()
        except RunDirError:
            return True
        self.unlock()
        return False

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def clean_temp(self) -> list[Path]:
        """Remove temporary files a killed writer left (only the lock holder may)."""
        removed = []
        for folder in (self.root, self.root / "points"):
            if folder.is_dir():
                for p in folder.glob(f".*{TEMP_SUFFIX}"):
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_bytes(self.root / name, (json.dumps(obj, indent=2) + "\n").encode())

    def write_text(self, name: str, text: str) -> None:
        atomic_write_bytes(self.root / name, text.encode())

    def read_json(self, name: str) -> Any:
        """A JSON file of the run (None if absent); damage raises RunDirError naming it."""
        path = self.root / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path}: damaged ({str(exc).splitlines()[0][:200]})") from None

    def append_line(self, name: str, obj: Any) -> None:
        with (self.root / name).open("a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- points and records --------------------------------------------------------------------
    @staticmethod
    def point_name(name: str) -> str:
        """Where :meth:`save_point` puts the point ``name``, relative to the run."""
        return f"points/{name}.safetensors"

    def save_point(self, name: str, params: Params, meta: dict[str, Any]) -> str:
        rel = self.point_name(name)
        tensors = {f"param/{k}": v for k, v in params.items()}
        atomic_save_tensors(self.root / rel, tensors, dict(meta, params=list(params)))
        return rel

    def append_record(self, record: dict[str, Any]) -> None:
        self.append_line(METRICS, record)

    def records(self, upto: int | None = None) -> list[dict[str, Any]]:
        """The run's records in order, checked: each line a JSON object with a ``seq`` one
        more than the last. A torn last line (a crash while appending) is dropped with a note;
        any other unreadable line raises RunDirError naming its line number.

        ``upto``: the checkpoint's last record. Records past it (written after the last commit)
        are dropped and their damage does not matter; it must itself be present."""
        path = self.root / METRICS
        if not path.exists():
            if upto is not None and upto >= 0:
                raise RunDirError(f"{path}: missing (the checkpoint covers {upto + 1} records)")
            return []
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        torn = lines[-1] != b""  # a complete file ends with a newline
        if not torn:
            lines = lines[:-1]
        out: list[dict[str, Any]] = []
        problems: list[str] = []
        last_seq = -1
        for number, line in enumerate(lines, start=1):
            if upto is not None and (upto < 0 or (out and out[-1]["seq"] == upto)):
                extra = len(lines) - number + 1
                self.notes.append(f"{path}: dropped {extra} line(s) written after the checkpoint")
                break
            try:
                record = json.loads(line.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON {type(record).__name__}, not a record")
                for key, kind in (("seq", int), ("kind", str), ("branch", str), ("metrics", dict)):
                    if not isinstance(record.get(key), kind):
                        raise ValueError(f"no valid {key!r}")
                for key in FILE_FIELDS:
                    if record.get(key) is not None and not _inside(record[key]):
                        raise ValueError(f"{key!r} is not a file inside the run directory")
                if record["kind"] == "stage_end" and not record.get("point"):
                    raise ValueError("a stage end that names no point")
                expected = last_seq + 1
                last_seq = record["seq"]  # resynchronise: one damaged line is one problem
                if record["seq"] != expected:
                    raise ValueError(f"seq {record['seq']} where {expected} was expected")
            except (ValueError, UnicodeDecodeError) as exc:
                if torn and number == len(lines):
                    self.notes.append(f"{path}: dropped a torn last line (a crash while writing)")
                    break
                problems.append(f"{path}: line {number} damaged ({str(exc)[:120]})")
                if len(problems) >= 10:
                    break
                continue
            out.append(record)
        if problems:
            raise RunDirError(problems)
        if upto is not None and upto >= 0 and (not out or out[-1]["seq"] != upto):
            last = out[-1]["seq"] if out else None
            raise RunDirError(
                f"{path}: record seq {upto}, which the checkpoint covers, is missing (the last "
                f"readable one is seq {last}); the records were cut or edited"
            )
        return out

    def truncate_records(self, last_seq: int) -> None:
        """Keep only records with ``seq <= last_seq`` (those the checkpoint covers)."""
        kept = self.records(upto=last_seq)
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

    def read_checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        path = self.root / CHECKPOINT
        if not path.exists():
            raise RunDirError(f"{path}: missing; there is no checkpoint to resume from")
        return read_tensors(path)

    @staticmethod
    def restore_checkpoint(
        tensors: dict[str, Tensor], meta: dict[str, Any], device: torch.device
    ) -> tuple[Params, Any, dict[str, Any]]:
        """Set the RNG to the checkpoint's and give back its point, state and metadata."""
        meta = dict(meta)
        torch.set_rng_state(tensors["rng/cpu"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        moved = {k: v.to(device) for k, v in tensors.items() if not k.startswith("rng/")}
        params = _params(moved, meta)
        state = unflatten_state(meta.pop("state"), moved)
        return params, state, meta

    def audit(
        self, records: list[dict[str, Any]], meta: dict[str, Any] | None, *, live: bool = False
    ) -> list[str]:
        """Every file the records (and the checkpoint's metadata) name, checked: one line per
        missing or damaged file. ``live``: another process is writing the run (report), so
        files newer than ``records`` are expected."""
        names: list[str] = []
        owners: dict[str, dict[str, Any]] = {}  # point -> the record that names it
        for r in records:
            names += [r[k] for k in FILE_FIELDS if r.get(k)]
            if r.get("point"):
                owners[r["point"]] = r
        if meta is not None:
            names += [meta[k] for k in ("anchor", "anchor_buffers") if meta.get(k)]
        if (self.root / FIXED).exists():
            names.append(FIXED)
        # every point file there is, named by a record or not (a start point, a carry)
        names += sorted(f"points/{p.name}" for p in (self.root / "points").glob("*.safetensors"))
        checked = (self.root / RUN).exists()  # a run of this version: every file has a sha256
        problems = []
        for rel in dict.fromkeys(names):
            try:
                _, meta_ = read_tensors(self.root / rel, require_sha=checked)
            except RunDirError as exc:
                problems += exc.problems
                continue
            owner = owners.get(rel)
            said = (meta_.get("branch"), meta_.get("stage"), meta_.get("step"))
            if (
                owner
                and said[0] is not None
                and said != (owner["branch"], owner["stage"], owner["step"])
            ):
                problems.append(
                    f"{self.root / rel}: is the point of {said[0]}/{said[1]} step {said[2]}, but "
                    f"record seq {owner['seq']} ({owner['branch']}/{owner['stage']} step "
                    f"{owner['step']}) names it; the records were edited"
                )
        for name in (RUN, "origin.json"):
            try:
                self.read_json(name)
            except RunDirError as exc:
                problems += exc.problems
        try:
            self.delivered(10**12 if live else records[-1]["seq"] if records else -1)
        except RunDirError as exc:
            problems += exc.problems
        return problems

    def delivered(self, last: int) -> int | None:
        """The last record every logger was given (None: not kept); checked against ``last``,
        the last committed record."""
        info = self.read_json(DELIVERED)
        if info is None:
            return None
        seq = info.get("seq") if isinstance(info, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or not -1 <= seq <= last:
            raise RunDirError(
                f'{self.root / DELIVERED}: damaged (expected {{"seq": N}} with -1 <= N <= '
                f"{last}, the last committed record; got {json.dumps(info)[:60]})"
            )
        return seq


def _open_for_lock(root: Path) -> int:
    if os.name == "nt":  # a directory cannot be opened for locking there: use the file
        return os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    return os.open(root, os.O_RDONLY)


def _flock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
