"""Fashion-MNIST, CIFAR-10/100 and user ``.npz`` files as (train, val, test) splits.

The files are read here, in the formats torchvision's downloaders write (IDX files under
``<root>/FashionMNIST/raw``, the pickled batches of ``cifar-10-batches-py`` and
``cifar-100-python``); torchvision is imported only to download missing files. Reading the
files ourselves skips torchvision's per-image ``Dataset`` objects (the tensors go to the device
whole) and accepts any file in the format, not only the ones whose checksums torchvision knows.
Pickled CIFAR batches are read with an unpickler that admits numpy arrays and nothing else.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fipframe.data.mnist import _ArraysOnly
from fipframe.data.task import Split
from fipframe.errors import ConfigError

FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
CIFAR = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "labels"),
    100: ("cifar-100-python", ["train"], "test", "fine_labels"),
}
CIFAR_MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
CIFAR_STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (``.gz`` or not) as a uint8 tensor of its stored shape."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ConfigError(f"{path}: header says {dims}, file holds {data.size} values")
    return torch.from_numpy(data.reshape(dims).copy())


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _val_cut(x: torch.Tensor, y: torch.Tensor, fraction: float) -> tuple[Split, Split]:
    """The last ``fraction`` of the official training set is the validation split."""
    cut = len(y) - int(round(len(y) * fraction))
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:])


def load_fashion_mnist(
    root: str | Path, download: bool, val_fraction: float = 1 / 6
) -> tuple[Split, Split, Split]:
    """Fashion-MNIST as normalised [N, 1, 28, 28] floats (50k/10k/10k by default)."""
    root = Path(root).expanduser()
    folder = root / "FashionMNIST" / "raw"
    missing = [s for pair in FMNIST_FILES.values() for s in pair if _find(folder, s) is None]
    if missing and download:
        from torchvision.datasets import FashionMNIST  # lazy: slow to import

        try:
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
        except (RuntimeError, OSError) as exc:
            raise ConfigError(
                f"data.root: could not download Fashion-MNIST to {root}: {exc}"
            ) from None
        missing = [s for pair in FMNIST_FILES.values() for s in pair if _find(folder, s) is None]
    if missing:
        raise ConfigError(
            f"data.root: Fashion-MNIST files {missing} not found under {folder} "
            "(set download: true to fetch them)"
        )
    parts = {}
    for split, (images, labels) in FMNIST_FILES.items():
        x = read_idx(_find(folder, images))  # type: ignore[arg-type]
        y = read_idx(_find(folder, labels)).long()  # type: ignore[arg-type]
        if x.dim() != 3 or len(x) != len(y):
            raise ConfigError(
                f"{folder}: {images} and {labels} do not match ({x.shape}, {y.shape})"
            )
        parts[split] = (x.unsqueeze(1).float().div_(255).sub_(FMNIST_MEAN).div_(FMNIST_STD), y)
    train, val = _val_cut(*parts["train"], val_fraction)
    return train, val, Split(*parts["test"])


def _unpickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        raw = _ArraysOnly(io.BytesIO(f.read()), encoding="latin1").load()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a CIFAR batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def load_cifar(
    classes: int, root: str | Path, download: bool, val_fraction: float = 0.1
) -> tuple[Split, Split, Split]:
    """CIFAR-10 or CIFAR-100 (fine labels) as normalised [N, 3, 32, 32] floats."""
    root = Path(root).expanduser()
    folder_name, train_files, test_file, label_key = CIFAR[classes]
    folder = root / folder_name
    needed = [*train_files, test_file]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR10, CIFAR100  # lazy: slow to import

        try:
            (CIFAR10 if classes == 10 else CIFAR100)(str(root), train=True, download=True)
        except (RuntimeError, OSError) as exc:
            raise ConfigError(
                f"data.root: could not download CIFAR-{classes} to {root}: {exc}"
            ) from None
        missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"data.root: CIFAR-{classes} files {missing} not found under {folder} "
            "(set download: true to fetch them)"
        )
    mean = torch.tensor(CIFAR_MEAN[classes]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD[classes]).view(1, 3, 1, 1)

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in files:
            batch = _unpickle(folder / name)
            if "data" not in batch or label_key not in batch:
                raise ConfigError(f"{folder / name}: expected keys 'data' and {label_key!r}")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise ConfigError(f"{folder / name}: data has shape {data.shape}, not [N, 3072]")
            xs.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
            ys.append(torch.as_tensor(np.asarray(batch[label_key]), dtype=torch.long))
        x = torch.cat(xs).float().div_(255)
        return (x - mean) / std, torch.cat(ys)

    train, val = _val_cut(*read(train_files), val_fraction)
    return train, val, Split(*read([test_file]))


def load_npz(
    path: str | Path, val_fraction: float, normalize: str = "none"
) -> tuple[Split, Split, Split]:
    """A user's arrays: ``x_train, y_train, x_test, y_test`` and optionally ``x_val, y_val``.

    ``normalize``: ``none`` keeps the arrays as stored (floats as float, integers as integers:
    token ids); ``scale`` divides by 255; ``standardize`` scales, then standardises by the
    training set's mean and std. Labels must be integers.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.path: {path} does not exist")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"data.path: {path} is not a readable .npz file ({exc})") from None
    need = ["x_train", "y_train", "x_test", "y_test"]
    if missing := [k for k in need if k not in arrays]:
        raise ConfigError(
            f"data.path: {path} lacks arrays {missing}; it has {sorted(arrays)} "
            "(expected x_train, y_train, x_test, y_test and optionally x_val, y_val)"
        )
    for k in [k for k in arrays if k.startswith("y_")]:
        if not np.issubdtype(arrays[k].dtype, np.integer):
            raise ConfigError(
                f"data.path: {path}: {k} must hold integer labels, not {arrays[k].dtype}"
            )
    for part in ("train", "val", "test"):
        if f"x_{part}" in arrays and len(arrays[f"x_{part}"]) != len(arrays.get(f"y_{part}", [])):
            raise ConfigError(f"data.path: {path}: x_{part} and y_{part} differ in length")
    xs = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items() if k.startswith("x_")}
    if normalize == "none":
        xs = {k: v.float() if v.is_floating_point() else v for k, v in xs.items()}
    else:
        xs = {k: v.float() / 255.0 for k, v in xs.items()}
    if normalize == "standardize":
        mean, std = xs["x_train"].mean(), xs["x_train"].std().clamp_min(1e-8)
        xs = {k: (v - mean) / std for k, v in xs.items()}
    ys = {
        k: torch.from_numpy(np.asarray(v)).long() for k, v in arrays.items() if k.startswith("y_")
    }
    if "x_val" in xs:
        train = Split(xs["x_train"], ys["y_train"])
        val = Split(xs["x_val"], ys["y_val"])
    else:
        train, val = _val_cut(xs["x_train"], ys["y_train"], val_fraction)
    return train, val, Split(xs["x_test"], ys["y_test"])
