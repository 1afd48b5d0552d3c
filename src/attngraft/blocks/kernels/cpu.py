"""The compiled CPU kernel as PyTorch operators, registered with :func:`torch.library.custom_op`.

``attngraft::neighbourhood_attention`` takes query, key and value; ``attngraft::packed_neighbourhood_attention``
takes them packed as one (B, 3, heads, D, H, W) projection (``local``'s qkv convolution), and returns its gradient
as one tensor too, so nothing is copied on the way in and autograd does not stack three gradients on the way out.
Autograd, ``torch.compile`` (an opaque call, no graph break) and fake tensors see them as ordinary operators.
The kernel computes in float32 (float64 for float64 inputs); other dtypes (bf16 under autocast) are converted on
the way in and back on the way out. Embedding and offset-bias gradients come per (batch, head) plane from the
kernel and are summed over the batch here.
"""

from __future__ import annotations

from typing import Any

import torch

from attngraft.blocks.kernels import native


def _kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _plane_major(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` (B, heads, D, H, W) as the kernel reads it: contiguous within each batch item, in ``dtype``."""
    _, heads, channels, height, width = tensor.shape
    inner = (channels * height * width, height * width, width, 1)
    if tensor.dtype == dtype and (tensor.stride()[1:] == inner or heads * channels * height * width == 0):
        return tensor
    return tensor.to(dtype).contiguous()


def _optional(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(dtype).contiguous()


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _call(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embeddings: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    kernel_size: int,
) -> native.Call:
    """The kernel call's inputs; query, key and value already as :func:`_plane_major` gives them."""
    row, col, offset = embeddings
    batch, heads, query_dim, height, width = query.shape
    return native.Call(
        query=query.data_ptr(), key=key.data_ptr(), value=value.data_ptr(),
        row_embedding=_address(row), col_embedding=_address(col), offset_bias=_address(offset),
        query_stride=query.stride(0), key_stride=key.stride(0), value_stride=value.stride(0),
        batch=batch, heads=heads, query_dim=query_dim, value_dim=value.shape[2],
        row_dim=0 if row is None else row.shape[-1], col_dim=0 if col is None else col.shape[-1],
        height=height, width=width, kernel=kernel_size, threads=torch.get_num_threads(),
    )  # fmt: skip


def _forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embeddings: tuple[torch.Tensor | None, ...],
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = _kernel_dtype(query.dtype)
    query, key, value = (_plane_major(tensor, dtype) for tensor in (query, key, value))
    prepared = tuple(_optional(tensor, dtype) for tensor in embeddings)
    call = _call(query, key, value, prepared, kernel_size)  # type: ignore[arg-type]
    batch, heads, _, height, width = query.shape
    out = torch.empty(batch, heads, value.shape[2], height, width, dtype=dtype)
    log_normaliser = torch.empty(batch, heads, height, width, dtype=dtype)
    call.out, call.lse = out.data_ptr(), log_normaliser.data_ptr()
    native.run("forward", call, double=dtype == torch.float64)
    return out, log_normaliser


def _backward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embeddings: tuple[torch.Tensor | None, ...],
    saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    kernel_size: int,
) -> list[torch.Tensor]:
    """Writes the query, key and value gradients into ``grads``; returns the other three.

    The embeddings' and the offset bias' gradients come summed over the batch; an absent one is an empty tensor.
    """
    dtype = grads[0].dtype
    query, key, value = (_plane_major(tensor, dtype) for tensor in (query, key, value))
    prepared = tuple(_optional(tensor, dtype) for tensor in embeddings)
    out, log_normaliser, grad_out = (tensor.to(dtype).contiguous() for tensor in saved)
    call = _call(query, key, value, prepared, kernel_size)  # type: ignore[arg-type]
    batch = query.shape[0]
    per_plane = [
        None if tensor is None else torch.empty(batch, *tensor.shape, dtype=dtype) for tensor in prepared
    ]  # (B, heads, ...): summed over the batch below
    call.out, call.lse, call.grad_out = out.data_ptr(), log_normaliser.data_ptr(), grad_out.data_ptr()
    call.grad_query, call.grad_key, call.grad_value = (grad.data_ptr() for grad in grads)
    call.grad_query_stride, call.grad_key_stride, call.grad_value_stride = (grad.stride(0) for grad in grads)
    call.grad_row_embedding, call.grad_col_embedding, call.grad_offset_bias = (_address(t) for t in per_plane)
    native.run("backward", call, double=dtype == torch.float64)
    return [  # an absent one: a fresh empty tensor (outputs must not alias) in the incoming gradient's dtype
        torch.empty(0, dtype=saved[2].dtype) if grad is None or original is None else grad.sum(0).to(original.dtype)
        for grad, original in zip(per_plane, embeddings, strict=True)
    ]


def _empty_grad(query: torch.Tensor, channels: int) -> torch.Tensor:
    batch, heads, _, height, width = query.shape
    return torch.empty(batch, heads, channels, height, width, dtype=_kernel_dtype(query.dtype))


@torch.library.custom_op("attngraft::neighbourhood_attention", mutates_args=(), device_types="cpu")
def neighbourhood_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    row_embedding: torch.Tensor | None,
    col_embedding: torch.Tensor | None,
    offset_bias: torch.Tensor | None,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, heads, Dv, H, W) and log-sum-exp (B, heads, H, W) of the k×k attention (neighbourhood.cpp)."""
    out, log_normaliser = _forward(query, key, value, (row_embedding, col_embedding, offset_bias), kernel_size)
    return out.to(query.dtype), log_normaliser


@torch.library.custom_op("attngraft::neighbourhood_attention_backward", mutates_args=(), device_types="cpu")
def neighbourhood_attention_backward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    row_embedding: torch.Tensor | None,
    col_embedding: torch.Tensor | None,
    offset_bias: torch.Tensor | None,
    out: torch.Tensor,
    log_normaliser: torch.Tensor,
    grad_out: torch.Tensor,
    kernel_size: int,
) -> list[torch.Tensor]:
    """Gradients of query, key, value, the two embeddings and the offset bias (empty for an absent one)."""
    grads = (_empty_grad(query, query.shape[2]), _empty_grad(query, query.shape[2]), _empty_grad(query, value.shape[2]))
    embeddings = (row_embedding, col_embedding, offset_bias)
    rest = _backward(query, key, value, embeddings, (out, log_normaliser, grad_out), grads, kernel_size)
    return [grad.to(original.dtype) for grad, original in zip(grads, (query, key, value), strict=True)] + rest


@torch.library.custom_op("attngraft::packed_neighbourhood_attention", mutates_args=(), device_types="cpu")
def packed_neighbourhood_attention(
    qkv: torch.Tensor,
    row_embedding: torch.Tensor | None,
    col_embedding: torch.Tensor | None,
    offset_bias: torch.Tensor | None,
    kernel_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention of query, key, value = qkv.unbind(1), qkv (B, 3, heads, D, H, W)."""
    query, key, value = qkv.to(_kernel_dtype(qkv.dtype)).contiguous().unbind(1)  # views: read in place
    out, log_normaliser = _forward(query, key, value, (row_embedding, col_embedding, offset_bias), kernel_size)
    return out.to(qkv.dtype), log_normaliser


@torch.library.custom_op("attngraft::packed_neighbourhood_attention_backward", mutates_args=(), device_types="cpu")
def packed_neighbourhood_attention_backward(
    qkv: torch.Tensor,
    row_embedding: torch.Tensor | None,
    col_embedding: torch.Tensor | None,
    offset_bias: torch.Tensor | None,
    out: torch.Tensor,
    log_normaliser: torch.Tensor,
    grad_out: torch.Tensor,
    kernel_size: int,
) -> list[torch.Tensor]:
    """The gradient of qkv as one tensor, then those of the embeddings and the offset bias."""
    packed = qkv.to(_kernel_dtype(qkv.dtype)).contiguous()
    grad = torch.empty_like(packed)
    query, key, value = packed.unbind(1)
    grad_query, grad_key, grad_value = grad.unbind(1)  # views: the kernel writes the packed gradient in place
    embeddings = (row_embedding, col_embedding, offset_bias)
    saved = (out, log_normaliser, grad_out)
    rest = _backward(query, key, value, embeddings, saved, (grad_query, grad_key, grad_value), kernel_size)
    return [grad.to(qkv.dtype), *rest]


def _fake_output(query: torch.Tensor, value_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, _, height, width = query.shape
    out = query.new_empty(batch, heads, value_dim, height, width)
    return out, query.new_empty(batch, heads, height, width, dtype=_kernel_dtype(query.dtype))


def _fake_grads(inputs: tuple[torch.Tensor | None, ...], grad_out: torch.Tensor) -> list[torch.Tensor]:
    """Contiguous gradients shaped like the inputs (as the kernel writes them); an absent one is empty."""
    return [grad_out.new_empty(0) if tensor is None else tensor.new_empty(tensor.shape) for tensor in inputs]


@neighbourhood_attention.register_fake
def _(query, key, value, row_embedding, col_embedding, offset_bias, kernel_size):  # type: ignore[no-untyped-def]
    return _fake_output(query, value.shape[2])


@neighbourhood_attention_backward.register_fake
def _(query, key, value, row_embedding, col_embedding, offset_bias, out, log_normaliser, grad_out, kernel_size):  # type: ignore[no-untyped-def]
    return _fake_grads((query, key, value, row_embedding, col_embedding, offset_bias), grad_out)


@packed_neighbourhood_attention.register_fake
def _(qkv, row_embedding, col_embedding, offset_bias, kernel_size):  # type: ignore[no-untyped-def]
    return _fake_output(qkv[:, 0], qkv.shape[3])


@packed_neighbourhood_attention_backward.register_fake
def _(qkv, row_embedding, col_embedding, offset_bias, out, log_normaliser, grad_out, kernel_size):  # type: ignore[no-untyped-def]
    return _fake_grads((qkv, row_embedding, col_embedding, offset_bias), grad_out)


def _save(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    *tensors, kernel_size = inputs
    ctx.save_for_backward(*tensors, *output)
    ctx.kernel_size = kernel_size
    ctx.absent = [tensor is None for tensor in tensors]


def _grads_for(ctx: Any, grads: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """The operator's gradients as autograd wants them: None for absent inputs and for the kernel size."""
    return (*(None if absent else grad for grad, absent in zip(grads, ctx.absent, strict=True)), None)


def _attention_backward(ctx: Any, grad_out: torch.Tensor, _grad_log_normaliser: Any) -> tuple[Any, ...]:
    *inputs, out, log_normaliser = ctx.saved_tensors
    grads = neighbourhood_attention_backward(*inputs, out, log_normaliser, grad_out, ctx.kernel_size)
    return _grads_for(ctx, grads)


def _packed_backward(ctx: Any, grad_out: torch.Tensor, _grad_log_normaliser: Any) -> tuple[Any, ...]:
    *inputs, out, log_normaliser = ctx.saved_tensors
    grads = packed_neighbourhood_attention_backward(*inputs, out, log_normaliser, grad_out, ctx.kernel_size)
    return _grads_for(ctx, grads)


neighbourhood_attention.register_autograd(_attention_backward, setup_context=_save)
packed_neighbourhood_attention.register_autograd(_packed_backward, setup_context=_save)
