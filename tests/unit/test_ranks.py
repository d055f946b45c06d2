"""What data parallelism refuses before any process starts work (no process group needed)."""

from __future__ import annotations

import pytest
import torch

from fipframe.api import load_config
from fipframe.errors import ConfigError
from fipframe.traversal.ranks import Ranks


def test_batches_the_processes_cannot_share_are_named_before_anything_runs(tiny):
    tiny["branches"]["fip"][0]["memory_batch"] = 30
    config = load_config(tiny)
    Ranks(0, 2).check_shares(config)  # 32 and 30 rows split in two
    with pytest.raises(ConfigError) as err:
        Ranks(0, 4).check_shares(config)
    assert str(err.value).splitlines() == [
        "branches.fip[0].memory_batch: 30 rows cannot be shared equally by 4 processes; make it "
        "a multiple of 4"
    ]
    Ranks().check_shares(config)  # one process shares nothing


def test_one_gpu_for_every_process_is_refused():
    with pytest.raises(ConfigError, match="run.device: cuda:0 names one GPU, but 2 processes"):
        Ranks(1, 2).device(torch.device("cuda", 0))
    assert Ranks(1, 2).device(torch.device("cpu")) == torch.device("cpu")
    assert Ranks().device(torch.device("cuda", 0)) == torch.device("cuda", 0)
