"""Fashion-MNIST, CIFAR-10/100 and .npz sequences, read from small files in the real formats."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from fipframe.data.memory import Memory
from fipframe.errors import ConfigError


def _idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_fmnist(root, n_train=60, n_test=20, gz=True):
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)


def make_cifar(root, classes=10, per_batch=30, n_test=20):
    rng = np.random.default_rng(1)
    if classes == 10:
        folder, files, test, key = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "test_batch",
            "labels",
        )
    else:
        folder, files, test, key = root / "cifar-100-python", ["train"], "test", "fine_labels"
    folder.mkdir(parents=True)
    for name, n in [(f, per_batch) for f in files] + [(test, n_test)]:
        batch = {
            "data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
            key: [int(i % classes) for i in range(n)],
            "batch_label": name,
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def _build(pm, data, seed=0):
    from fipframe.api import load_config

    cfg = load_config(
        {
            "name": "d",
            "model": "mlp",
            "data": data,
            "stages": [
                {
                    "name": "s",
                    "task": 0,
                    "steps": 1,
                    "integrator": "gradient",
                    "objectives": ["task_ce"],
                }
            ],
        },
        pm=pm,
    )
    return pm.registry.build("dataset", cfg.data, seed=seed)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_then_fashion_mnist_from_idx_files(pm, tmp_path, gz):
    make_fmnist(tmp_path, gz=gz)
    seq = _build(
        pm, {"kind": "mnist_fmnist", "root": str(tmp_path), "download": False, "train_limit": 100}
    )
    assert [t.name for t in seq.tasks] == ["mnist", "fmnist"] and seq.num_classes == 20
    fm = seq.tasks[1]
    assert fm.classes == tuple(range(10, 20))
    assert len(fm.train) == 50 and len(fm.val) == 10 and len(fm.test) == 20  # 5/6 train, 1/6 val
    assert fm.train.y.min() == 10 and fm.train.y.max() == 19
    assert fm.train.x.shape[1:] == (1, 28, 28)
    assert len(seq.tasks[0].train) == 100 and seq.tasks[0].train.y.max() <= 9
    # pixels standardised: the random uint8 images have mean about 127.5/255
    assert abs(float(fm.train.x.mean()) - (0.5 - 0.2860) / 0.3530) < 0.05


@pytest.mark.parametrize("classes", [10, 100])
def test_split_cifar_from_pickled_batches(pm, tmp_path, classes):
    make_cifar(tmp_path, classes, per_batch=100 if classes == 100 else 30)
    seq = _build(
        pm,
        {"kind": f"split_cifar{classes}", "root": str(tmp_path), "download": False, "n_tasks": 5},
    )
    assert len(seq.tasks) == 5 and seq.num_classes == classes and seq.input_shape == (3, 32, 32)
    assert seq.tasks[1].classes == tuple(range(classes // 5, 2 * classes // 5))
    total_train = sum(len(t.train) + len(t.val) for t in seq.tasks)
    assert total_train == (150 if classes == 10 else 100)
    assert all(set(t.test.y.tolist()) <= set(t.classes) for t in seq.tasks)


def test_missing_files_name_the_folder_and_the_fix(pm, tmp_path):
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py.*download: true"):
        _build(pm, {"kind": "split_cifar10", "root": str(tmp_path), "download": False})
    with pytest.raises(ConfigError, match=r"FashionMNIST.*download: true"):
        _build(pm, {"kind": "mnist_fmnist", "root": str(tmp_path), "download": False})
    with pytest.raises(ConfigError, match="n_tasks"):
        _build(pm, {"kind": "split_cifar10", "root": str(tmp_path), "n_tasks": 3})


def test_cifar_pickle_with_code_is_refused(pm, tmp_path):
    make_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _build(pm, {"kind": "split_cifar10", "root": str(tmp_path), "download": False})


def test_npz_sequence_and_its_errors(pm, tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (100, 1, 6, 6)).astype(np.uint8),
        y_train=np.arange(100) % 4,
        x_test=rng.integers(0, 256, (40, 1, 6, 6)).astype(np.uint8),
        y_test=np.arange(40) % 4,
    )
    seq = _build(
        pm, {"kind": "npz", "path": str(path), "tasks": [[0, 1], [2, 3]], "scenario": "task"}
    )
    assert seq.num_classes == 4 and seq.input_shape == (1, 6, 6) and seq.scenario == "task"
    assert len(seq.tasks[0].train) + len(seq.tasks[0].val) == 50 and len(seq.tasks[1].test) == 20
    raw = torch.cat([t.train.x for t in seq.tasks])
    assert raw.dtype == torch.uint8 and int(raw.max()) == 255  # as stored: no silent rescaling
    for normalize, low, high in (("scale", 0.0, 1.0), ("standardize", -2.0, 2.0)):
        seq = _build(
            pm, {"kind": "npz", "path": str(path), "tasks": [[0, 1]], "normalize": normalize}
        )
        x = seq.tasks[0].train.x
        assert x.dtype == torch.float32 and low <= float(x.min()) and float(x.max()) <= high
    assert abs(float(x.mean())) < 0.2  # standardized by the training set
    with pytest.raises(ConfigError, match=r"classes \[7\] do not occur"):
        _build(pm, {"kind": "npz", "path": str(path), "tasks": [[0, 7]]})
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((3, 2)), y_train=np.zeros(3))
    with pytest.raises(ConfigError, match=r"lacks arrays \['x_test', 'y_test'\]"):
        _build(pm, {"kind": "npz", "path": str(tmp_path / "bad.npz"), "tasks": [[0]]})
    with pytest.raises(ConfigError, match="does not exist"):
        _build(pm, {"kind": "npz", "path": str(tmp_path / "nope.npz"), "tasks": [[0]]})


def test_reservoir_memory_is_uniform_and_only_evicts():
    from fipframe.data.task import Split, Task

    def task(n, c):
        y = torch.full((n,), c)
        return Task(
            f"t{c}",
            (c,),
            Split(torch.arange(n).float()[:, None] + 10000 * c, y),
            Split(y[:0], y[:0]),
            Split(y[:0], y[:0]),
        )

    mem = Memory(200, "reservoir", seed=5)
    sizes = [1000, 3000, 1000]
    kept: list[set[float]] = []
    for i, n in enumerate(sizes):
        mem.add_task(i, task(n, i))
        kept.append(set(mem.inputs[:, 0].tolist()))
        assert len(mem) == 200
    # an example once evicted never returns
    assert {v for v in kept[2] if v < 20000} <= kept[1]
    assert {v for v in kept[1] if v < 10000} <= kept[0]
    # shares follow task sizes (1:3:1), unlike the equal split of class_balanced
    counts = mem.counts()
    assert counts[1] > 90 and counts[0] < 60 and counts[2] < 60, counts
    again = Memory(200, "reservoir", seed=5)
    for i, n in enumerate(sizes):
        again.add_task(i, task(n, i))
    assert torch.equal(again.inputs, mem.inputs)
