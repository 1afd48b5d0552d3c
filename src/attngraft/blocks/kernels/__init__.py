"""k×k neighbourhood attention kernels, chosen by device: the room the ``local`` family of blocks computes in.

One operation, several backends with the same results::

    out = neighbourhood_attention(query, key, value, kernel_size, row_embedding=..., col_embedding=..., offset_bias=...)

For every pixel (y, x) and each neighbour (a, b) of its k×k window that lies inside the image, the logit is
``q · k_ab + q[:Dr] · row_embedding[a] + q[D − Dc:] · col_embedding[b] + offset_bias[a·k + b]``; the softmax runs
over the in-image window. SASA's 2-D relative embeddings are the row and column embeddings (each on half the
head's channels); the local relation layer's geometric prior is the offset bias.

Backends:
    ``native``: the compiled C++ kernel (``neighbourhood.cpp``), fused forward and recomputing backward; the CPU
        default when a C++ compiler is present (built by ``make setup`` or on first use, cached on disk).
    ``reference``: pure PyTorch (``reference.py``), shifted views with a chunked, recomputing backward; the
        fallback, and what ``native`` is tested against.
    ``flex``: ``torch.nn.attention.flex_attention`` with a neighbourhood mask, compiled; the CUDA default.

``use_backend(name)`` forces one for a block of code (a context variable: per thread and task, not global).
Recording probabilities, exporting, and FLOP counting on the meta device always take the plain reference path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from attngraft.blocks.kernels import native
from attngraft.blocks.kernels.reference import (
    aggregate,
    border_bias,
    chunked_neighbourhood_attention,
    neighbourhood_attention_reference,
    window_logits,
)

BACKENDS = ("native", "reference", "flex")
_forced: ContextVar[str | None] = ContextVar("attngraft_kernel_backend", default=None)


def check_backend(name: str | None) -> None:
    """Raises ``ValueError`` listing the backends when ``name`` is not one of them (None means automatic)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(
            f"k×k attention backend {name!r} is not valid; choose one of {list(BACKENDS)} or None (automatic)"
        )


@contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Forces the k×k attention backend inside the block (None: automatic again)."""
    check_backend(name)
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


@torch.compiler.assume_constant_result  # type: ignore[untyped-decorator]  # torch.compile: a constant, not a trace through the library's loading
def _native_available() -> bool:
    return native.available()


def choose_backend(device: torch.device, preferred: str | None = None) -> str:
    """The backend for tensors on ``device``: the forced one, else ``preferred``, else by device."""
    name = _forced.get() or preferred
    if name is not None:
        return name
    if device.type == "cpu" and _native_available():
        return "native"
    if device.type == "cuda":
        return "flex"
    return "reference"


def plain_path_required(query: torch.Tensor) -> bool:
    """Exporting, tracing, meta tensors (FLOP counting) and empty inputs take the plain reference path."""
    # _is_tracing: torch.jit.is_tracing, typed
    exporting = torch.compiler.is_exporting() or torch._C._is_tracing()
    return exporting or query.device.type == "meta" or query.numel() == 0


def check_shapes(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    embeddings: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
) -> None:
    """Raises ``ValueError`` naming the tensor whose shape does not fit the query's (no broadcasting)."""
    if query.ndim != 5:
        raise ValueError(f"k×k attention: query must be (B, heads, D, H, W), got shape {tuple(query.shape)}")
    batch, heads, dim, height, width = query.shape
    if tuple(key.shape) != tuple(query.shape):
        raise ValueError(f"k×k attention: key shape {tuple(key.shape)} must equal the query's {tuple(query.shape)}")
    if value.ndim != 5 or (value.shape[:2], value.shape[3:]) != (query.shape[:2], query.shape[3:]):
        raise ValueError(
            f"k×k attention: value must be ({batch}, {heads}, Dv, {height}, {width}), got shape {tuple(value.shape)}"
        )
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"k×k attention: kernel_size must be a positive odd integer, got {kernel_size}")
    row, col, offset = embeddings
    for name, embedding in (("row_embedding", row), ("col_embedding", col)):
        if embedding is not None and (
            embedding.ndim != 3 or embedding.shape[:2] != (heads, kernel_size) or not 1 <= embedding.shape[2] <= dim
        ):
            raise ValueError(
                f"k×k attention: {name} must be ({heads}, {kernel_size}, d) with 1 ≤ d ≤ {dim}, "
                f"got shape {tuple(embedding.shape)}"
            )
    if offset is not None and tuple(offset.shape) != (heads, kernel_size**2):
        raise ValueError(
            f"k×k attention: offset_bias must be ({heads}, {kernel_size**2}), got shape {tuple(offset.shape)}"
        )


def neighbourhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    *,
    row_embedding: torch.Tensor | None = None,
    col_embedding: torch.Tensor | None = None,
    offset_bias: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """k×k attention of every pixel over its in-image neighbourhood (see the module docstring).

    Args:
        query: (B, heads, D, H, W).
        key: (B, heads, D, H, W).
        value: (B, heads, Dv, H, W).
        kernel_size: Odd window side k.
        row_embedding: (heads, k, Dr): a logit term q[:Dr] · row_embedding[a] per window row a.
        col_embedding: (heads, k, Dc): a logit term q[D − Dc:] · col_embedding[b] per window column b.
        offset_bias: (heads, k²): a logit term per neighbour offset, shared by every pixel.
        backend: One of :data:`BACKENDS`, or None to choose by device.

    Returns:
        (B, heads, Dv, H, W).
    """
    check_backend(backend)
    check_shapes(query, key, value, kernel_size, (row_embedding, col_embedding, offset_bias))
    embeddings = _in_dtype(query.dtype, (row_embedding, col_embedding, offset_bias))
    return _attend(query, key.to(query.dtype), value.to(query.dtype), kernel_size, embeddings, backend)


def _in_dtype(dtype: torch.dtype, tensors: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
    """The optional logit terms in the activations' dtype, so everything the kernels save shares one.

    (Under bf16 autocast the projections are bf16 and the embeddings fp32 parameters.)
    """
    return tuple(None if tensor is None else tensor.to(dtype) for tensor in tensors)


def _attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    embeddings: tuple[torch.Tensor | None, ...],
    backend: str | None,
) -> torch.Tensor:
    """The attention on the chosen backend; inputs already checked and in one dtype."""
    if plain_path_required(query):
        return neighbourhood_attention_reference(query, key, value, kernel_size, *embeddings)[0]
    name = choose_backend(query.device, backend)
    if name == "native":
        from attngraft.blocks.kernels import cpu  # noqa: F401  (registers the operators on first use)

        return torch.ops.attngraft.neighbourhood_attention(query, key, value, *embeddings, kernel_size)[0]
    if name == "flex":
        from attngraft.blocks.kernels import flex

        return flex.neighbourhood_attention_flex(query, key, value, kernel_size, *embeddings)
    return chunked_neighbourhood_attention(query, key, value, kernel_size, *embeddings)


def packed_neighbourhood_attention(
    qkv: torch.Tensor,
    kernel_size: int,
    *,
    row_embedding: torch.Tensor | None = None,
    col_embedding: torch.Tensor | None = None,
    offset_bias: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """:func:`neighbourhood_attention` of ``qkv.unbind(1)``, qkv (B, 3, heads, D, H, W) from one projection.

    The compiled kernel reads the packed tensor in place and returns its gradient as one tensor (no copies in, no
    stacking of three gradients out); the other backends unbind it.
    """
    check_backend(backend)
    if qkv.ndim != 6 or qkv.shape[1] != 3:
        raise ValueError(f"k×k attention: qkv must be (B, 3, heads, D, H, W), got shape {tuple(qkv.shape)}")
    query, key, value = qkv.unbind(1)
    check_shapes(query, key, value, kernel_size, (row_embedding, col_embedding, offset_bias))
    embeddings = _in_dtype(qkv.dtype, (row_embedding, col_embedding, offset_bias))
    if not plain_path_required(qkv) and choose_backend(qkv.device, backend) == "native":
        from attngraft.blocks.kernels import cpu  # noqa: F401  (registers the operators on first use)

        return torch.ops.attngraft.packed_neighbourhood_attention(qkv, *embeddings, kernel_size)[0]
    return _attend(query, key, value, kernel_size, embeddings, backend)


__all__ = [
    "BACKENDS",
    "aggregate",
    "border_bias",
    "check_backend",
    "choose_backend",
    "neighbourhood_attention",
    "neighbourhood_attention_reference",
    "packed_neighbourhood_attention",
    "use_backend",
    "window_logits",
]
