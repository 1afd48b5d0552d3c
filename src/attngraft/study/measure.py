"""What a study measures besides accuracy: parameters, FLOPs, CPU latency, and the machine it ran on."""

from __future__ import annotations

import copy
import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn

from attngraft.models import count_parameters, flops


def model_costs(network: nn.Module, input_shape: Sequence[int]) -> dict[str, float]:
    """Parameters (millions, all and trainable) and forward GFLOPs for one image of ``input_shape`` (C, H, W).

    GFLOPs count 2 per multiply-add (``torch.utils.flop_counter``, plus the elementwise attention of k×k local
    blocks), on the meta device: nothing is computed.
    """
    return {
        "params_m": count_parameters(network) / 1e6,
        "trainable_params_m": count_parameters(network, trainable_only=True) / 1e6,
        "gflops": flops(network, (1, *input_shape)) / 1e9,
    }


def median_ms(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``step`` in milliseconds, after ``warmup`` untimed calls (CUDA synchronised)."""
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


def cpu_latency(
    network: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int], repeats: int = 5
) -> dict[str, float]:
    """Inference time per image on the CPU, in milliseconds, at each batch size: ``{"latency_ms_b1": ...}``.

    A copy of ``network`` runs in eval mode under ``torch.inference_mode`` with the process's CPU threads; each
    batch size gets one untimed call, then the median of ``repeats`` timed calls is divided by the batch size.
    """
    model = copy.deepcopy(network).cpu().eval()
    generator = torch.Generator().manual_seed(0)
    result = {}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, *input_shape, generator=generator)
            result[f"latency_ms_b{batch_size}"] = median_ms(partial(model, images), repeats) / batch_size
    return result


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    """What numbers were measured on: CPU, cores, torch threads, GPU, versions."""
    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def environment() -> dict[str, object]:
    """:func:`machine` plus the versions of the stack and the source commit, for a results file."""
    versions: dict[str, str | None] = {}
    for package in ("attngraft", "torchvision", "timm", "lightning", "torchmetrics", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {**machine(), **versions, "platform": platform.platform(), "git_commit": _git_commit()}


def _git_commit() -> str | None:
    """The checkout's commit (with "+dirty" for uncommitted changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit
