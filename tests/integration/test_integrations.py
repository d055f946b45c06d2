"""FIP outside the engine on real MNIST (0-4, then 5-9): in a plain loop, a Lightning callback
and an Avalanche plugin, each keeps the old digits where the same training without it forgets
them. The examples in docs/examples are the code under test (at a reduced size)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs/examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _forgets_without_keeps_with(results: dict) -> None:
    plain_old, plain_new = results["plain"]
    fip_old, fip_new = results["fip"]
    assert plain_old < 0.1  # class-incremental fine-tuning forgets 0-4 entirely
    assert fip_old > 0.75, results
    assert plain_new > 0.8 and fip_new > 0.75, results  # and both learn the new one


def test_own_loop_keeps_the_old_task():
    _forgets_without_keeps_with(_example("own_loop").main(steps=200))


def test_lightning_callback_keeps_the_old_task():
    pytest.importorskip("lightning")
    _forgets_without_keeps_with(_example("lightning_fip").main(steps=200))


def test_avalanche_plugin_keeps_the_old_task():
    pytest.importorskip("avalanche")
    _forgets_without_keeps_with(_example("avalanche_fip").main(train_size=12000))


def test_lightning_callback_keeps_its_anchors_through_a_checkpoint(tmp_path):
    pytest.importorskip("lightning")
    import lightning.pytorch as L
    import torch

    from fipframe.integrations.lightning import FIPCallback

    ex = _example("lightning_fip")
    torch.manual_seed(0)
    module = ex.Classifier()
    stored = torch.randn(16, 1, 28, 28)
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 28, 28), torch.randint(10, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    fip = FIPCallback(stored, alpha=1.0)
    kw = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(max_steps=2, callbacks=[fip], default_root_dir=tmp_path, **kw)
    trainer.fit(module, loader)
    ckpt = tmp_path / "c.ckpt"
    trainer.save_checkpoint(ckpt)
    anchors = fip.regularizer.anchor_outputs.clone()
    for given in (None, stored):  # the checkpoint brings inputs and anchors, never twice
        again = FIPCallback(given, alpha=1.0)
        trainer = L.Trainer(max_steps=4, callbacks=[again], default_root_dir=tmp_path, **kw)
        trainer.fit(ex.Classifier(), loader, ckpt_path=ckpt)
        torch.testing.assert_close(again.regularizer.anchor_outputs, anchors)
        torch.testing.assert_close(again.regularizer.inputs, stored)
    more = torch.randn(4, 1, 28, 28)
    again = FIPCallback(stored, alpha=1.0)
    again.add(more)  # new inputs given before the resumed fit are stored, once
    trainer = L.Trainer(max_steps=4, callbacks=[again], default_root_dir=tmp_path, **kw)
    trainer.fit(ex.Classifier(), loader, ckpt_path=ckpt)
    assert len(again.regularizer) == 20
    torch.testing.assert_close(again.regularizer.anchor_outputs[:16], anchors)
