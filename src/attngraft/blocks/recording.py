"""One mechanism to record attention probabilities from any model, off (and free) by default.

Every block that computes attention owns an :class:`AttentionProbe`. When the probe is disabled the block takes
its fused path (``F.scaled_dot_product_attention``) and the probe is never called. Inside
:func:`record_attention` the probes are enabled, the blocks switch to the path that materialises the
probabilities, and each probe's output is collected by a forward hook; on exit the hooks are removed and the
probes disabled again.

Example:
    >>> with record_attention(model) as records:  # doctest: +SKIP
    ...     model(images)
    >>> records["encoder.0.mixer.probe"][0].shape  # doctest: +SKIP
    torch.Size([1, 8, 197, 197])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from typing_extensions import override


class AttentionProbe(nn.Module):
    """Pass-through point where a block hands over its attention probabilities while recording.

    Shape:
        - Input: (B, heads, queries, keys) or any block-specific probability layout.
        - Output: the same tensor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False

    @override
    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities


@contextmanager
def record_attention(model: nn.Module, detach: bool = True) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Records the attention probabilities of every block in ``model`` during the ``with`` body.

    Args:
        model: Any module; its :class:`AttentionProbe` submodules are recorded.
        detach: Store detached tensors (set False to keep the graph, e.g. for attention gradients).

    Yields:
        A dict from probe name (its module path) to the list of tensors it saw, one per forward call.
    """
    records: dict[str, list[torch.Tensor]] = {}
    handles = []
    probes = [(name, module) for name, module in model.named_modules() if isinstance(module, AttentionProbe)]

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            records.setdefault(name, []).append(output.detach() if detach else output)

        return hook

    try:
        for name, probe in probes:
            probe.enabled = True
            handles.append(probe.register_forward_hook(hook_for(name)))
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for _, probe in probes:
            probe.enabled = False
