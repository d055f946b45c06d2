"""What the checksums cost: writing and reading a checkpoint with fipframe's checked format
against plain safetensors, side by side in one run, for three sizes.

fipframe serialises once in memory, hashes the tensor index, its metadata and the data
(sha256), and writes header + data; reading hashes the bytes it loads. Plain safetensors
writes and reads without a checksum. Both fsync and rename (the atomic write) the same way.

Usage: python bench/checkpoint_cost.py [--repeats 5]
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from fipframe.traversal.artifact import _atomic, atomic_save_tensors, read_tensors  # noqa: E402


def plain_save(path, tensors, meta):
    with _atomic(path) as tmp:
        save_file(tensors, tmp, metadata={"fipframe": meta})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(
        f"{'size':>8}  {'write plain':>11}  {'write checked':>13}  {'ratio':>5}  "
        f"{'read plain':>10}  {'read checked':>12}  {'ratio':>5}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_sizes(pathlib.Path(tmp), args.repeats)


def run_sizes(root: pathlib.Path, repeats: int) -> None:
    for mb in (2, 90, 270):  # the demo MLP; MiniLM-sized weights; MiniLM with Adam's moments
        n = mb * 2**20 // 4
        tensors = {f"param/{i}": torch.randn(n // 8) for i in range(8)}
        times = {"wp": [], "wc": [], "rp": [], "rc": []}
        for _ in range(repeats):  # alternate, so drift hits both alike
            t = time.perf_counter()
            plain_save(root / "plain.safetensors", tensors, "{}")
            times["wp"].append(time.perf_counter() - t)
            t = time.perf_counter()
            atomic_save_tensors(root / "checked.safetensors", tensors, {})
            times["wc"].append(time.perf_counter() - t)
            t = time.perf_counter()
            load_file(str(root / "plain.safetensors"))
            times["rp"].append(time.perf_counter() - t)
            t = time.perf_counter()
            read_tensors(root / "checked.safetensors")
            times["rc"].append(time.perf_counter() - t)
        m = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(
            f"{mb:>6}MB  {m['wp']:>9.1f}ms  {m['wc']:>11.1f}ms  {m['wc'] / m['wp']:>5.2f}  "
            f"{m['rp']:>8.1f}ms  {m['rc']:>10.1f}ms  {m['rc'] / m['rp']:>5.2f}"
        )


if __name__ == "__main__":
    main()
