"""Start-up cost of the command line, side by side in one run: each command is timed as a
fresh process, interleaved round by round with the others, against a bare ``python -c pass``.

    python bench/startup.py [--repeats 7]

Printed: median wall seconds per command and its ratio to the bare interpreter. The help
commands are answered without loading plugins (they import torch); `plugins` and `validate`
load them, which is what every command that does work pays once.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import fipframe": [sys.executable, "-c", "import fipframe"],
    "python -m fipframe --help": [sys.executable, "-m", "fipframe", "--help"],
    "python -m fipframe run --help": [sys.executable, "-m", "fipframe", "run", "--help"],
    "python -m fipframe plugins": [sys.executable, "-m", "fipframe", "plugins"],
    "python -m fipframe validate --preset split-mnist": [
        sys.executable, "-m", "fipframe", "validate", "--preset", "split-mnist",
    ],
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {args.repeats} repeats")
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.repeats):  # interleaved: drift in load hits every command alike
        for name, cmd in COMMANDS.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<40} {'median s':>9} {'x python':>9}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<40} {m:>9.3f} {m / base:>9.1f}")


if __name__ == "__main__":
    main()
