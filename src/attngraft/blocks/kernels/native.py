"""The compiled CPU kernel (``neighbourhood.cpp``): building it once, caching it on disk, loading it with ctypes.

The kernel is plain C++ with a C interface (no PyTorch headers), so it builds in about two seconds with the
system's C++ compiler and does not depend on PyTorch's ABI. ``make setup`` builds it
(``python -m attngraft.blocks.kernels build``); otherwise the first use builds it. The library lands in
``$ATTNGRAFT_KERNEL_CACHE`` (default ``~/.cache/attngraft/kernels``) under a name made of a hash of the source, the
compiler flags and the compiler, so an edit or another CPU target builds a new one and an old one is never
reused by mistake. Builds are atomic (a temporary file renamed into place), so concurrent processes are safe.

When no compiler is present, or the build fails, :func:`library` returns None (once logged) and callers fall
back to the pure-PyTorch reference.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("neighbourhood.cpp")
ABI_VERSION = 2
DISABLE_VARIABLE = "ATTNGRAFT_NATIVE_KERNELS"  # "0" turns the compiled kernel off


def cache_dir() -> Path:
    """Where built libraries are kept: ``$ATTNGRAFT_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/attngraft/kernels``."""
    explicit = os.environ.get("ATTNGRAFT_KERNEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attngraft" / "kernels"


def target_flags() -> list[str]:
    """Instruction-set flags for this CPU, from what PyTorch itself detected (so the library runs where built)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ["-DATTNGRAFT_TILE=4"]  # 128-bit vectors (NEON, ...)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return ["-march=x86-64-v4", "-mprefer-vector-width=512", "-DATTNGRAFT_TILE=16"]
    if capability == "AVX2":
        return ["-march=x86-64-v3", "-DATTNGRAFT_TILE=8"]
    return ["-DATTNGRAFT_TILE=4"]


def compiler() -> str | None:
    """The C++ compiler: ``$CXX``, else the first of c++, g++, clang++ on the PATH."""
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def compile_command(cxx: str, output: Path) -> list[str]:
    """The command line that compiles the kernel into ``output``."""
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-fno-math-errno", *target_flags()]
    if torch.backends.openmp.is_available():  # type: ignore[no-untyped-call]  # share PyTorch's OpenMP runtime (see over_planes in the source)
        flags.append("-fopenmp")
    return [cxx, *flags, "-o", str(output), str(SOURCE), "-pthread"]


def library_path(cxx: str) -> Path:
    """The cached library's path: named by a hash of the source, the command line and the compiler's version."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(compile_command(cxx, Path("out"))).encode(), version.encode()):
        digest.update(part)
    return cache_dir() / f"neighbourhood-{digest.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compiles the kernel into the cache (unless already there); returns the library's path.

    Raises:
        RuntimeError: No C++ compiler, or the compiler failed (its output is included).
    """
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set $CXX or install g++)")
    path = library_path(cxx)
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=path.stem, suffix=".so.tmp", dir=path.parent)
    os.close(descriptor)
    try:
        result = subprocess.run(compile_command(cxx, Path(temporary)), capture_output=True, text=True, check=False)
        if result.returncode:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr.strip()}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o755 & ~umask)  # mkstemp made it 0600: a shared cache must be readable by all
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    log.info("built the k×k attention kernel: %s", path)
    return path


def enabled() -> bool:
    """False when ``$ATTNGRAFT_NATIVE_KERNELS`` is "0" (the pure-PyTorch kernels are used then)."""
    return os.environ.get(DISABLE_VARIABLE, "1") != "0"


@cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it first if needed; None (logged once) when it cannot be had."""
    if not enabled():
        return None
    try:
        loaded = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as error:
        log.warning("k×k attention falls back to the pure-PyTorch kernels (slower): %s", error)
        return None
    if loaded.attngraft_neighbourhood_abi_version() != ABI_VERSION:
        log.warning("k×k attention library has another ABI version; using the pure-PyTorch kernels")
        return None
    return loaded


def available() -> bool:
    """Whether the compiled kernel can be used in this process."""
    return library() is not None


class Call(ctypes.Structure):
    """One kernel call's tensors and sizes: the mirror of ``struct Call`` in ``neighbourhood.cpp``."""

    _fields_ = [
        *(
            (name, ctypes.c_void_p)
            for name in ("query", "key", "value", "row_embedding", "col_embedding", "offset_bias")
        ),
        *((name, ctypes.c_int64) for name in ("query_stride", "key_stride", "value_stride")),
        *(
            (name, ctypes.c_int64)
            for name in (
                "batch", "heads", "query_dim", "value_dim", "row_dim", "col_dim", "height", "width", "kernel", "threads"
            )
        ),
        *((name, ctypes.c_void_p) for name in ("out", "lse", "grad_out", "grad_query", "grad_key", "grad_value")),
        *((name, ctypes.c_int64) for name in ("grad_query_stride", "grad_key_stride", "grad_value_stride")),
        *((name, ctypes.c_void_p) for name in ("grad_row_embedding", "grad_col_embedding", "grad_offset_bias")),
    ]  # fmt: skip


PROBLEMS = {1: "a size is not positive", 2: "the kernel size is not odd", 3: "an embedding is wider than the query",
            4: "a tensor is missing", 5: "out of memory for the kernel's scratch"}  # fmt: skip


def run(direction: str, call: Call, double: bool) -> None:
    """Runs the forward or backward kernel on ``call``.

    Raises:
        RuntimeError: The library is not available.
        ValueError: The kernel refused the call (its reason named).
    """
    loaded = library()
    if loaded is None:
        raise RuntimeError("the compiled k×k attention kernel is not available (see the log for why)")
    function = getattr(loaded, f"attngraft_neighbourhood_{direction}_{'f64' if double else 'f32'}")
    status = function(ctypes.byref(call))
    if status:
        raise ValueError(f"k×k attention kernel: {PROBLEMS.get(status, f'error {status}')}")
