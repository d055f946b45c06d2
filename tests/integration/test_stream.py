"""Streamed data: batches through real DataLoader workers, the same as resident, resumable."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Dataset

import fipframe
from fipframe.api import load_config
from fipframe.data.mnist import load_mnist
from fipframe.data.user import task_sequence
from fipframe.errors import ConfigError
from fipframe.plugins import make_plugin_manager

from .test_traversal import Recorder, end_points


def _with_methods(tiny):
    cfg = copy.deepcopy(tiny)
    cfg["model"]["dropout"] = 0.2  # draws from torch's generator: streaming must not move it
    base = cfg["branches"]["finetune"][0]
    cfg["branches"]["lwf"] = [dict(base, objectives=["task_ce", "lwf", "replay_ce"])]
    cfg["branches"]["joint"] = [dict(base, objectives=["joint_ce", "ewc"])]
    return cfg


def test_streamed_data_reaches_the_points_resident_data_does(tiny, tmp_path):
    cfg = _with_methods(tiny)
    fipframe.run(cfg, out=tmp_path / "resident")
    cfg["run"]["stream"] = True
    cfg["run"]["loader"] = {"workers": 2}
    fipframe.run(cfg, out=tmp_path / "streamed")
    a, b = end_points(tmp_path / "resident"), end_points(tmp_path / "streamed")
    assert set(a) == {"trunk", "finetune", "fip", "lwf", "joint"}
    for branch in a:
        for name in a[branch]:
            assert torch.equal(a[branch][name], b[branch][name]), (branch, name)


def test_streamed_run_resumes_exactly(tiny, tmp_path):
    cfg = copy.deepcopy(tiny)
    cfg["model"]["dropout"] = 0.2
    cfg["run"].update(stream=True, loader={"workers": 1})
    whole = tmp_path / "whole"
    fipframe.run(cfg, out=whole)
    pm = make_plugin_manager(plugins=[Recorder(stop_after=5)])
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        fipframe.run(load_config(cfg, pm=pm), out=cut)
    fipframe.resume(cut)
    a, b = end_points(whole), end_points(cut)
    for branch in a:
        for name in a[branch]:
            assert torch.equal(a[branch][name], b[branch][name]), (branch, name)


class Noisy(Dataset):
    """A user's Dataset with a random per-item transform (noise), as augmentation does."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.3 * torch.randn(self.x[i].shape), int(self.y[i])


@pytest.fixture(scope="module")
def noisy_tasks():
    train, _, test = load_mnist()

    def task(lo):
        keep = (train.y >= lo) & (train.y < lo + 2)
        keep_t = (test.y >= lo) & (test.y < lo + 2)
        return (
            Noisy(train.x[keep][:400], train.y[keep][:400]),
            Noisy(test.x[keep_t][:100], test.y[keep_t][:100]),
        )

    return [task(0), task(2)]


def test_random_transforms_of_a_dataset_are_reproduced_across_resume(tiny, noisy_tasks, tmp_path):
    cfg = copy.deepcopy(tiny)
    del cfg["model"], cfg["data"]
    cfg["run"]["loader"] = {"workers": 2}

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 4))

    whole, again, cut = tmp_path / "whole", tmp_path / "again", tmp_path / "cut"
    first = fipframe.run(cfg, model=model(), data=noisy_tasks, out=whole)
    fipframe.run(cfg, model=model(), data=noisy_tasks, out=again)
    pm = make_plugin_manager(plugins=[Recorder(stop_after=4)])
    with pytest.raises(KeyboardInterrupt):
        fipframe.run(load_config(cfg, pm=pm), model=model(), data=noisy_tasks, out=cut)
    fipframe.resume(cut, model=model(), data=noisy_tasks)
    a, b, c = end_points(whole), end_points(again), end_points(cut)
    for branch in a:
        for name in a[branch]:
            assert torch.equal(a[branch][name], b[branch][name]), (branch, name)
            assert torch.equal(a[branch][name], c[branch][name]), (branch, name)
    assert first.final["fip"]["task_0"] > first.final["finetune"]["task_0"]


def test_a_per_batch_device_transform_is_seeded_per_step(noisy_tasks):
    seen = []

    def flip(x, g):
        seen.append(torch.rand((), generator=g, device=x.device).item())
        return x.flip(-1)

    seq = task_sequence(noisy_tasks, transform=flip)
    from fipframe.data.sampling import Sampler

    split = seq.tasks[0].train
    stream = split.batches(Sampler(len(split), 8, seed=1, name="s", device="cpu"))
    for t in (0, 1, 2, 1, 2):  # a rollback to step 1 draws step 1's numbers again
        stream.get(t)
    stream.close()
    assert seen[1] == seen[3] and seen[2] == seen[4] and seen[0] != seen[1]


def test_a_dataset_of_the_wrong_types_is_refused(noisy_tasks):
    class Images(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return [[0.0] * 784], 1  # a list where a tensor belongs (a PIL image, say)

    with pytest.raises(ConfigError, match=r"data\[1\].train: a Dataset's item must be \(input"):
        task_sequence([noisy_tasks[0], (Images(), Images())])


def test_labels_come_from_the_items_and_numpy_labels_are_integers(noisy_tasks):
    import numpy as np

    class Relabelled(Noisy):
        """targets that a target_transform would contradict."""

        def __init__(self, x, y):
            super().__init__(x, y)
            self.targets = (y + 1).tolist()

    class NumpyLabels(Noisy):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x, np.int64(y)

    train = noisy_tasks[0][0]
    with pytest.raises(ConfigError, match=r"train: the Dataset's targets .* disagree with the"):
        task_sequence([(Relabelled(train.x, train.y), noisy_tasks[0][1])])
    seq = task_sequence([(NumpyLabels(train.x, train.y), noisy_tasks[0][1])])
    assert seq.tasks[0].classes == (0, 1) and torch.equal(seq.tasks[0].train.y, train.y.long())


def test_a_transform_of_tensors_runs_per_step_on_the_device(tiny):
    train, _, test = load_mnist()
    keep = train.y < 2
    tasks = [(train.x[keep][:300], train.y[keep][:300], test.x[:50], test.y[:50] % 2)]
    calls = []

    def noise(x, g):
        calls.append(1)
        return x + 0.1 * torch.randn(x.shape, generator=g, device=x.device)

    cfg = copy.deepcopy(tiny)
    del cfg["model"], cfg["data"], cfg["branches"]

    def go():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2))
        return fipframe.run(cfg, model=model, data=task_sequence(tasks, transform=noise))

    a, b = go(), go()
    assert len(calls) == 2 * cfg["stages"][0]["steps"]
    assert a.final == b.final
