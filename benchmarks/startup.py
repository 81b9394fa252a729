"""Start-up time of deqkit's entry points against ``import torch`` (issue 21: ``deqkit --help`` ≤ 1.3×).

Best of ``--repeats`` interleaved runs of each command in fresh interpreters (so load from other processes hits
every command alike); ratios to ``python -c "import torch"``. ``PYTHONPATH=. python benchmarks/startup.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.common import write_json

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import deqkit": [sys.executable, "-c", "import deqkit"],
    "import deqkit; deqkit.fixed_point": [sys.executable, "-c", "import deqkit; deqkit.fixed_point"],
    "deqkit --help": [sys.executable, "-m", "deqkit", "--help"],
    "deqkit train --help": [sys.executable, "-m", "deqkit", "train", "--help"],
}
TARGET = 1.3  # deqkit --help within 1.3x of import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
            times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    rows = {name: {"best_s": best[name], "median_s": statistics.median(times[name]),
                   "ratio_to_import_torch": best[name] / best["import torch"]} for name in COMMANDS}
    table = Table(title=f"start-up, best of {args.repeats} interleaved runs", title_justify="left")
    for column in ("command", "best (s)", "median (s)", "× import torch"):
        table.add_column(column, justify="right" if column != "command" else "left")
    for name, row in rows.items():
        table.add_row(name, f"{row['best_s']:.2f}", f"{row['median_s']:.2f}", f"{row['ratio_to_import_torch']:.2f}")
    Console().print(table)
    met = rows["deqkit --help"]["ratio_to_import_torch"] <= TARGET
    print(f"target deqkit --help <= {TARGET}x import torch: {'met' if met else 'not met'}")
    write_json(args.json, "startup", {"repeats": args.repeats}, {"rows": rows, "target": TARGET, "met": met})


if __name__ == "__main__":
    main()
