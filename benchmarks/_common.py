"""Shared helpers of the benchmark scripts: machine description, median timing, peak memory in a subprocess."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from attngraft.study.measure import machine, median_ms

__all__ = [
    "current_rss_mib",
    "machine",
    "median_ms",
    "paired_median_ms",
    "peak_extra_mib_in_subprocess",
    "peak_rss_mib",
    "reset_peak_rss",
]


def paired_median_ms(step: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median times of ``step`` and ``baseline`` measured alternately (A B A B ...), so drift hits both."""
    step()
    baseline()
    step_times, baseline_times = [], []
    for _ in range(repeats):
        step_times.append(median_ms(step, 1, warmup=0))
        baseline_times.append(median_ms(baseline, 1, warmup=0))
    return statistics.median(step_times), statistics.median(baseline_times)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def current_rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    return _status_mib("VmRSS")


def reset_peak_rss() -> None:
    """Resets this process's resident high-water mark to its current size (Linux ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """Highest resident memory of this process since start or :func:`reset_peak_rss`, in MiB.

    ``VmHWM`` belongs to this process image; ``getrusage``'s ``ru_maxrss`` would not do: it survives ``exec``
    and so starts at the parent's high-water mark.
    """
    return _status_mib("VmHWM")


def peak_extra_mib_in_subprocess(script: Path, arguments: list[str]) -> float:
    """Runs ``script --memory-probe ARGS`` in a fresh process and returns the JSON number it prints.

    Large allocations are forced to ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the resident
    set at once and the peak resident size tracks live tensors.
    """
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, str(script), "--memory-probe", *arguments],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    return float(json.loads(result.stdout.strip().splitlines()[-1]))
