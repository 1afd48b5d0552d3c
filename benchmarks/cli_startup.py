"""Start-up time of the ``attngraft`` command: ``--help``, every subcommand's ``--help``, and ``attngraft data``.

Each command runs as a whole process (``python -m attngraft.cli WORDS``, output discarded) ``--repeats`` times, one
after another; the report gives the minimum and median wall time, the median CPU time of the process (user +
system: less sensitive than wall time to other load on a shared machine), and which heavy libraries the command
imported (one more run under ``-X importtime``). ``attngraft data`` summarises Fashion-MNIST, so it needs its files.

The timed runs share a private user cache, filled by an untimed first run: what a user sees from the second call on
(the training commands' help is kept there, Fashion-MNIST is staged there). The report also gives that first run,
on an empty cache, with the heavy libraries it imported.

    python benchmarks/cli_startup.py [--json] [--quick] [--repeats N] [--commands=--help,data --help,data]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attngraft.cli import build_parser

HEAVY = ("torch", "lightning", "timm", "torchvision", "torchmetrics", "matplotlib", "numpy")


def default_commands() -> list[str]:
    """``--help``, ``<subcommand> --help`` for every subcommand (the parser's order), then ``data``."""
    actions = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return ["--help", *(f"{name} --help" for name in actions[0].choices), "data"]


def machine() -> dict[str, object]:
    """CPU, cores and Python: what start-up time depends on (asked without importing torch, unlike ``_common``)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def run_once(words: list[str], cache: str, *options: str) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stderr) of one ``python OPTIONS -m attngraft.cli WORDS`` process.

    ``cache`` is its ``XDG_CACHE_HOME``.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *options, "-m", "attngraft.cli", *words],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": cache},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"attngraft {' '.join(words)} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stderr


def heavy_imports(importtime_log: str) -> list[str]:
    """The heavy top-level packages named in a ``-X importtime`` log."""
    names = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in importtime_log.splitlines()
        if line.startswith("import")
    }
    return [name for name in HEAVY if name in names]


def measure(command: str, repeats: int) -> dict[str, object]:
    words = command.split()
    with tempfile.TemporaryDirectory() as cache:
        first_s, first_cpu_s, first_log = run_once(words, cache, "-X", "importtime")  # empty cache; fills it
        *_, log = run_once(words, cache, "-X", "importtime")  # also warms the file cache before the timed runs
        timings = [run_once(words, cache)[:2] for _ in range(repeats)]
    walls = [wall for wall, _ in timings]
    return {
        "command": f"attngraft {command}",
        "min_s": round(min(walls), 3),
        "median_s": round(statistics.median(walls), 3),
        "median_cpu_s": round(statistics.median(cpu for _, cpu in timings), 3),
        "heavy_imports": heavy_imports(log),
        "first_s": round(first_s, 3),
        "first_cpu_s": round(first_cpu_s, 3),
        "first_heavy_imports": heavy_imports(first_log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--quick", action="store_true", help="one timed run per command (a smoke test)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per command (default: 7)")
    parser.add_argument("--commands", help="comma-separated command lines (default: every --help, then data)")
    args = parser.parse_args()
    commands = [part.strip() for part in args.commands.split(",")] if args.commands else default_commands()
    repeats = 1 if args.quick else args.repeats
    rows = [measure(command, repeats) for command in commands]
    if args.json:
        print(json.dumps({"machine": machine(), "repeats": repeats, "rows": rows}, indent=2))
        return
    print(f"{'command':<32}{'min s':>8}{'median s':>10}{'cpu s':>8}{'first s':>9}  heavy imports (first run)")
    for row in rows:
        imports = ", ".join(row["heavy_imports"]) or "-"  # type: ignore[arg-type]
        first = ", ".join(row["first_heavy_imports"]) or "-"  # type: ignore[arg-type]
        print(
            f"{row['command']:<32}{row['min_s']:>8}{row['median_s']:>10}{row['median_cpu_s']:>8}{row['first_s']:>9}"
            f"  {imports} ({first})"
        )


if __name__ == "__main__":
    main()
