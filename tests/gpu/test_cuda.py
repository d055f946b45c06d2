"""On a CUDA device (marked ``gpu``; deselected by default, run with ``-m gpu`` where one is lent):
the steps of a chunk never wait for the device (no host sync), and a traversal on the GPU
learns what it learns on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from fipframe.api import load_config
from fipframe.data.memory import Memory
from fipframe.plugins import make_plugin_manager
from fipframe.traversal.build import build_components, build_stage
from fipframe.traversal.step import make_problem

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

STAGES = {
    "replay": {"integrator": "gradient", "objectives": ["task_ce", "replay_ce"]},
    "penalty": {
        "integrator": {"kind": "penalty", "alpha": 10.0},
        "metric": "bhattacharyya",
        "objectives": ["task_ce"],
    },
    "eps_step": {
        "integrator": {"kind": "eps_step", "eps": 0.01},
        "metric": "kl",
        "objectives": ["task_ce"],
    },
}


@pytest.mark.parametrize("autocast", ["off", "bf16"])
@pytest.mark.parametrize("rule", list(STAGES))
def test_the_steps_of_a_chunk_make_no_host_sync(rule, autocast, tiny):
    cfg = copy.deepcopy(tiny)
    cfg["run"]["device"] = "cuda"
    cfg["run"]["autocast"] = autocast
    cfg["branches"] = {rule: [{"name": "s", "task": 1, "steps": 100, **STAGES[rule]}]}
    pm = make_plugin_manager(entry_points_enabled=False)
    config = load_config(cfg, pm=pm)
    comp = build_components(config, pm=pm, registry=pm.registry)
    memory = Memory(60, seed=0)
    memory.add_task(0, comp.tasks.tasks[0])
    params = comp.adapter.params()
    st = build_stage(comp, rule, 0, config.branches[rule][0], params, memory, [], {})
    state = st.integrator.init(params)
    for t in range(3):  # lazy initialisation (kernels, allocator) may sync once
        params, state, _ = st.integrator.step(params, state, make_problem(comp, st, memory, t, 0))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync from here on raises
    try:
        for t in range(3, 23):
            problem = make_problem(comp, st, memory, t, t / 100)
            params, state, stats = st.integrator.step(params, state, problem)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v).all() for v in stats.values())


def test_a_traversal_on_the_gpu_learns_what_it_learns_on_the_cpu(tiny, tmp_path):
    import fipframe

    results = {}
    for device in ("cpu", "cuda"):
        cfg = copy.deepcopy(tiny)
        cfg["run"]["device"] = device
        results[device] = fipframe.run(cfg, out=tmp_path / device).final
    for branch, accs in results["cpu"].items():
        for task, acc in accs.items():  # other kernels, other rounding: close, not equal
            assert abs(results["cuda"][branch][task] - acc) < 0.05, (branch, task)


def stacked_steps(tiny, device: str, steps: int, no_sync: bool) -> list:
    """Two seeds' penalty steps stacked by lockstep (as run_together does them), 3 warm-up steps
    then ``steps`` more, under ``set_sync_debug_mode("error")`` if ``no_sync``."""
    from fipframe.traversal import lockstep

    pm = make_plugin_manager(entry_points_enabled=False)
    paths = []
    for seed in (0, 1):
        cfg = copy.deepcopy(tiny)
        cfg["run"].update(device=device, seed=seed)
        cfg["branches"] = {"p": [{"name": "s", "task": 1, "steps": 100, **STAGES["penalty"]}]}
        config = load_config(cfg, pm=pm)
        comp = build_components(config, pm=pm, registry=pm.registry)
        memory = Memory(60, seed=0)
        memory.add_task(0, comp.tasks.tasks[0])
        params = comp.adapter.params()
        st = build_stage(comp, "p", 0, config.branches["p"][0], params, memory, [], {})
        paths.append([comp, st, memory, params, st.integrator.init(params)])
    notes = lockstep.Notes(say=lambda s: pytest.fail(s))

    def step(t: int) -> None:
        problems = [make_problem(c, st, m, t, t / 100) for c, st, m, _, _ in paths]
        offers = [
            lockstep.request(c, st.integrator, pr, p[3], "p/s", notes)
            for (c, st, *_), pr, p in zip(paths, problems, paths, strict=True)
        ]
        for pr, given in zip(problems, lockstep.gradients(offers), strict=True):
            pr.given = given
        for p, pr in zip(paths, problems, strict=True):
            p[3], p[4], _ = p[1].integrator.step(p[3], p[4], pr)
            assert pr.given is None  # the stacked gradient was taken

    for t in range(3):  # lazy initialisation (kernels, allocator) may sync once
        step(t)
    if no_sync:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host sync from here on raises
    try:
        for t in range(3, 3 + steps):
            step(t)
    finally:
        if no_sync:
            torch.cuda.set_sync_debug_mode("default")
    return [p[3] for p in paths]


def test_stacked_lockstep_steps_make_no_host_sync(tiny):
    points = stacked_steps(tiny, "cuda", 20, no_sync=True)
    assert all(torch.isfinite(v).all() for p in points for v in p.values())
