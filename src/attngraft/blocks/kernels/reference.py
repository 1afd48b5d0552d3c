"""The pure-PyTorch k×k neighbourhood attention: the reference every other backend is tested against.

The k² neighbours are visited as k² shifted views of the zero-padded keys and values, so no (k² × larger) unfolded
copy is ever made. :func:`neighbourhood_attention_reference` is plain autograd (used while recording, exporting
or counting FLOPs); :class:`ChunkedNeighbourhoodAttention` has a hand-written backward that recomputes the
probabilities from a saved log-sum-exp one batch chunk at a time, so its extra memory is bounded by
:data:`CHUNK_ELEMENTS` (the fallback when the compiled kernel is missing). Double backward is not supported there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Images per chunk are chosen so one chunk's (heads, k², H, W) logits hold about this many elements (2 MiB of
# fp32: cache-sized, measured fastest on CPU).
CHUNK_ELEMENTS = 1 << 19


def _window(padded: torch.Tensor, row: int, col: int, height: int, width: int) -> torch.Tensor:
    """The height×width view of a (…, H + 2r, W + 2r) padded map whose top-left corner is (row, col)."""
    return padded[..., row : row + height, col : col + width]


def _pad(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Zero-pads the last two dims by the window radius on every side."""
    radius = kernel_size // 2
    return F.pad(x, (radius, radius, radius, radius))


def _offsets(kernel_size: int) -> list[tuple[int, int]]:
    """Window offsets (row, col) in 0..k−1, row-major: the k² neighbours of a pixel."""
    return [(row, col) for row in range(kernel_size) for col in range(kernel_size)]


def border_bias(height: int, width: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """0 where neighbour (row, col) of pixel (y, x) lies inside the image, −inf outside.

    Returns:
        (k², H, W) in the dtype and device of ``like``.
    """
    radius = kernel_size // 2
    steps = torch.arange(kernel_size, device=like.device) - radius
    rows = steps[:, None, None, None] + torch.arange(height, device=like.device)[None, None, :, None]
    cols = steps[None, :, None, None] + torch.arange(width, device=like.device)[None, None, None, :]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)  # (k, k, H, W)
    bias = torch.zeros(inside.shape, dtype=like.dtype, device=like.device).masked_fill(~inside, float("-inf"))
    return bias.flatten(0, 1)  # (k², H, W)


def neighbour_dots(x: torch.Tensor, other: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """x_ij · other_ab over each pixel's k×k window: (b, heads, d, H, W) twice → (b, heads, k², H, W)."""
    height, width = x.shape[-2:]
    padded = _pad(other, kernel_size)
    return torch.stack([(x * _window(padded, row, col, height, width)).sum(2) for row, col in _offsets(kernel_size)], 2)


def offset_terms(
    kernel_size: int,
    row_bias: torch.Tensor | None,
    col_bias: torch.Tensor | None,
    offset_bias: torch.Tensor | None,
) -> torch.Tensor | float:
    """The additive logit terms of neighbour (a, b): row_bias[a] + col_bias[b] + offset_bias[a·k + b].

    Shape:
        row_bias, col_bias: (b, heads, k, H, W); offset_bias: (heads, k²). Returns a tensor that broadcasts to
        (b, heads, k², H, W), or 0.0 when all three are None.
    """
    total: torch.Tensor | float = 0.0
    if row_bias is not None:
        total = total + row_bias.repeat_interleave(kernel_size, dim=2)  # row a at a·k + b for every b
    if col_bias is not None:
        total = total + col_bias.repeat(1, 1, kernel_size, 1, 1)  # column b at a·k + b for every a
    if offset_bias is not None:
        total = total + offset_bias[None, :, :, None, None]  # (1, heads, k², 1, 1)
    return total


def window_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    kernel_size: int,
    row_bias: torch.Tensor | None = None,
    col_bias: torch.Tensor | None = None,
    offset_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """q·k_ab plus the offset terms plus the border bias (−inf outside the image), for every pixel and neighbour.

    Shape:
        query, key: (b, heads, d, H, W). Returns (b, heads, k², H, W).
    """
    height, width = query.shape[-2:]
    border = border_bias(height, width, kernel_size, query)
    return neighbour_dots(query, key, kernel_size) + offset_terms(kernel_size, row_bias, col_bias, offset_bias) + border


def _sum_over_offsets(kernel_size: int, term: Callable[[int, int, int], torch.Tensor]) -> torch.Tensor:
    """Σ over the k² window offsets of ``term(index, row, col)``, as a chain of adds (at most two alive at once)."""
    offsets = _offsets(kernel_size)
    total = term(0, *offsets[0])
    for index, (row, col) in enumerate(offsets[1:], start=1):
        total = total + term(index, row, col)
    return total


def aggregate(weights: torch.Tensor, values: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Σ_ab w_ab v_ab: weights (b, heads, k², H, W) and values (b, heads, d, H, W) → (b, heads, d, H, W)."""
    height, width = values.shape[-2:]
    padded = _pad(values, kernel_size)
    return _sum_over_offsets(
        kernel_size,
        lambda index, row, col: weights[:, :, index : index + 1] * _window(padded, row, col, height, width),
    )


def scatter_back(weights: torch.Tensor, values: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """The adjoint of the neighbourhood gather: out_ab = Σ_ij w_ij[neighbour (a, b)] v_ij, same shapes as above.

    Every key pixel collects the contribution of each query whose window holds it (the query at the mirrored
    offset), so this is a gather too, with no scatter-add.
    """
    height, width = values.shape[-2:]
    last = kernel_size - 1
    padded_weights, padded_values = _pad(weights, kernel_size), _pad(values, kernel_size)
    return _sum_over_offsets(
        kernel_size,
        lambda index, row, col: (
            _window(padded_weights[:, :, index : index + 1], last - row, last - col, height, width)
            * _window(padded_values, last - row, last - col, height, width)
        ),
    )


def embedding_terms(
    query: torch.Tensor, row_embedding: torch.Tensor | None, col_embedding: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """q[:Dr] · row_embedding[a] and q[D − Dc:] · col_embedding[b] for every pixel and window row a / column b.

    Shape:
        query: (b, heads, D, H, W); row_embedding: (heads, k, Dr); col_embedding: (heads, k, Dc).
        Returns (b, heads, k, H, W) for each given embedding, None for an absent one.
    """
    rows = cols = None
    if row_embedding is not None:
        rows = torch.einsum("bhcyx,hic->bhiyx", query[:, :, : row_embedding.shape[-1]], row_embedding)
    if col_embedding is not None:
        cols = torch.einsum("bhcyx,hjc->bhjyx", query[:, :, query.shape[2] - col_embedding.shape[-1] :], col_embedding)
    return rows, cols


def neighbourhood_attention_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    row_embedding: torch.Tensor | None = None,
    col_embedding: torch.Tensor | None = None,
    offset_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention and its probabilities, in plain autograd.

    Shape:
        query, key: (b, heads, d, H, W); value: (b, heads, dv, H, W). Returns (b, heads, dv, H, W) and the
        probabilities (b, heads, k², H, W).
    """
    row_bias, col_bias = embedding_terms(query, row_embedding, col_embedding)
    probabilities = window_logits(query, key, kernel_size, row_bias, col_bias, offset_bias).softmax(2)
    return aggregate(probabilities, value, kernel_size), probabilities


def chunked_neighbourhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kernel_size: int,
    row_embedding: torch.Tensor | None = None,
    col_embedding: torch.Tensor | None = None,
    offset_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention with a recomputing, chunked backward (:class:`ChunkedNeighbourhoodAttention`)."""
    row_bias, col_bias = embedding_terms(query, row_embedding, col_embedding)
    out: torch.Tensor = ChunkedNeighbourhoodAttention.apply(
        query, key, value, row_bias, col_bias, offset_bias, kernel_size
    )
    return out


def _chunks(batch: int, per_image: int) -> list[slice]:
    size = max(1, CHUNK_ELEMENTS // max(per_image, 1))
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


def _part(tensor: torch.Tensor | None, part: slice) -> torch.Tensor | None:
    return None if tensor is None else tensor[part]


class ChunkedNeighbourhoodAttention(torch.autograd.Function):
    """The attention over batch chunks; saves only the inputs, the output and the log-sum-exp for backward."""

    @staticmethod
    def forward(
        ctx: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        row_bias: torch.Tensor | None,
        col_bias: torch.Tensor | None,
        offset_bias: torch.Tensor | None,
        kernel_size: int,
    ) -> torch.Tensor:
        """The output, computed one batch chunk at a time (see :data:`CHUNK_ELEMENTS`)."""
        batch, heads, _, height, width = query.shape
        outs, log_normalisers = [], []
        chunks = _chunks(batch, heads * kernel_size**2 * height * width)
        for part in chunks:
            scores = window_logits(
                query[part], key[part], kernel_size, _part(row_bias, part), _part(col_bias, part), offset_bias
            )
            log_normaliser = scores.logsumexp(2, keepdim=True)  # (b, heads, 1, H, W)
            outs.append(aggregate((scores - log_normaliser).exp(), value[part], kernel_size))
            log_normalisers.append(log_normaliser)
        out, log_normaliser = torch.cat(outs), torch.cat(log_normalisers)
        ctx.save_for_backward(query, key, value, row_bias, col_bias, offset_bias, out, log_normaliser)
        ctx.kernel_size, ctx.chunks = kernel_size, chunks
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """The inputs' gradients, recomputing the probabilities chunk by chunk from the saved log-sum-exp."""
        query, key, value, row_bias, col_bias, offset_bias, out, log_normaliser = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grads: list[torch.Tensor | None] = [torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)]
        grads += [None if bias is None else torch.empty_like(bias) for bias in (row_bias, col_bias)]
        grads.append(None if offset_bias is None else torch.zeros_like(offset_bias))
        for part in ctx.chunks:
            inputs = (query[part], key[part], value[part], _part(row_bias, part), _part(col_bias, part), offset_bias)
            chunk_grads = _backward_chunk(ctx.kernel_size, inputs, out[part], log_normaliser[part], grad_out[part])
            for index, chunk_grad in enumerate(chunk_grads):
                grad = grads[index]
                if grad is None:
                    continue
                if index == 5:
                    grad += chunk_grad
                else:
                    grad[part] = chunk_grad
        return *grads, None


def _backward_chunk(
    kernel_size: int,
    inputs: tuple[torch.Tensor | None, ...],
    out: torch.Tensor,
    log_normaliser: torch.Tensor,
    grad_out: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Gradients of one chunk for (query, key, value, row_bias, col_bias, offset_bias), recomputing the softmax."""
    query, key, value, row_bias, col_bias, offset_bias = inputs
    if query is None or key is None or value is None:
        raise TypeError("query, key and value are required")
    probabilities = (window_logits(query, key, kernel_size, row_bias, col_bias, offset_bias) - log_normaliser).exp()
    grad_probabilities = neighbour_dots(grad_out, value, kernel_size)
    grad_logits = probabilities * (grad_probabilities - (grad_out * out).sum(2, keepdim=True))  # (b, heads, k², H, W)
    batch, heads, _, height, width = grad_logits.shape
    by_offset = grad_logits.view(batch, heads, kernel_size, kernel_size, height, width)  # (b, heads, k, k, H, W)
    return (
        aggregate(grad_logits, key, kernel_size),
        scatter_back(grad_logits, query, kernel_size),
        scatter_back(probabilities, grad_out, kernel_size),
        by_offset.sum(3),
        by_offset.sum(2),
        grad_logits.sum((0, 3, 4)),
    )
