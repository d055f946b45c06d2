"""The README's "Your model, your data" example runs as printed and shows what it says."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_your_model_your_data_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text.split("## Your model, your data", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(code.splitlines()) < 25
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    result, net = scope["result"], scope["net"]
    final = result.final
    assert final["fip"]["task_0"] > 0.85 and final["finetune"]["task_0"] < 0.05
    assert min(final["fip"]["task_1"], final["finetune"]["task_1"]) > 0.9
    assert "fip" in capsys.readouterr().out
    assert (tmp_path / "runs" / "mine" / "origin.json").is_file()
    x, y = scope["tasks"][0][2], scope["tasks"][0][3]
    import torch

    with torch.no_grad():
        acc = float((net(x).argmax(-1) == y).float().mean())
    assert abs(acc - final["fip"]["task_0"]) < 1e-6
