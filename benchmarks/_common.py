"""Shared helpers of the benchmark scripts: machine description, median timing, peak memory in a subprocess."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def median_ms(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``step`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
