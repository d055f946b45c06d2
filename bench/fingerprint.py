"""Fingerprints of five runs: a hash of every saved point and every metric of each.

For refactors that must not change behaviour: run it on the code before and after and compare
the printed hashes (equal hashes: the same points and metrics, bit for bit). The runs are the
test suite's small configs on real MNIST: the tiny two-branch config, every step rule, the
sparsity config on an MLP and on a BatchNorm CNN, five continual-learning methods. About a
minute on 2 CPU cores.

Usage: python bench/fingerprint.py OUT_DIR   (writes OUT_DIR/fingerprints.json)
"""

import copy
import hashlib
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from fipframe.api import load_config, run  # noqa: E402
from fipframe.traversal.artifact import load_point  # noqa: E402
from tests.conftest import TINY  # noqa: E402
from tests.integration.test_continual import _config  # noqa: E402
from tests.integration.test_sparsity import sparse_config  # noqa: E402


def configs():
    yield "tiny", copy.deepcopy(TINY)
    t = copy.deepcopy(TINY)
    t["branches"]["natural"] = [
        dict(t["branches"]["fip"][0], integrator={"kind": "natural", "eps": 0.01})
    ]
    t["branches"]["projected"] = [
        dict(
            t["branches"]["fip"][0],
            integrator={"kind": "projected", "eps": 0.01, "rank": 4, "refresh": 10},
        )
    ]
    t["branches"]["eps"] = [
        dict(t["branches"]["fip"][0], integrator={"kind": "eps_step", "eps": 0.01})
    ]
    t["branches"]["stored"] = [dict(t["branches"]["fip"][0], anchor="stored")]
    t["branches"]["replay"] = [
        dict(t["branches"]["finetune"][0], objectives=["task_ce", "replay_ce"])
    ]
    yield "tiny-steps", t
    yield "sparse", sparse_config()
    yield (
        "sparse-cnn",
        sparse_config(
            model={"kind": "small_cnn", "channels": [4, 8], "hidden": 16, "batch_norm": True}
        ),
    )
    yield (
        "continual",
        _config(
            {
                "ewc": ["task_ce", "ewc"],
                "si": ["task_ce", {"kind": "si", "weight": 1.0}],
                "lwf": ["task_ce", "lwf"],
                "der": ["task_ce", "der", "replay_ce"],
                "joint": ["joint_ce"],
            },
            trunk_objectives=("task_ce", {"kind": "si", "weight": 0.0}),
        ),
    )


out = {}
root = pathlib.Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
for name, cfg in configs():
    d = root / name
    res = run(load_config(cfg), out=d)
    recs = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    h = hashlib.sha256()
    for r in recs:
        m = {k: v for k, v in r["metrics"].items()}
        h.update(
            json.dumps([r["branch"], r["stage"], r["step"], r["kind"], m], sort_keys=True).encode()
        )
        if r.get("point"):
            for k, v in load_point(d / r["point"]).items():
                h.update(k.encode())
                h.update(v.numpy().tobytes())
    out[name] = h.hexdigest()
    print(name, out[name], flush=True)
(root / "fingerprints.json").write_text(json.dumps(out, indent=1) + "\n")
