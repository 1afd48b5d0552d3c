"""Seeded permutations equal to ``torch.randperm`` on a seeded CPU generator, without importing torch.

The data splits are defined by ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``. Tools that only
describe a dataset (``attngraft data``) must not pay seconds for importing torch, so this module draws the same
permutations with numpy: both use the 32-bit Mersenne Twister (MT19937) seeded the same way, and PyTorch's CPU
``randperm`` is a Fisher-Yates shuffle that swaps item ``i`` with item ``i + draw % (n - i)`` for ``n < 2**32 / 20``.
Tests check the equality against ``torch.randperm`` for many sizes and seeds, and for successive draws from one
generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# PyTorch's CPU randperm switches to 64-bit draws at this size (ATen's randperm_cpu); beyond it we defer to torch.
TORCH_SMALL_N_LIMIT = (2**32 - 1) // 20


class SeededShuffler:
    """Successive permutations from one seeded generator, as ``torch.randperm`` on ``Generator().manual_seed(seed)``.

    Args:
        seed: Any integer; like ``torch.Generator.manual_seed``, only its value modulo 2**32 matters.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._state = np.random.RandomState(self.seed % 2**32)
        self._drawn = False
        self._torch_generator: Any = None

    def permutation(self, size: int) -> list[int]:
        """A random order of ``range(size)``, the next one this generator draws.

        Shape:
            - Output: ``size`` distinct integers in ``[0, size)``.
        """
        if size < 0:
            raise ValueError(f"a permutation needs a size >= 0, got {size}")
        if size >= TORCH_SMALL_N_LIMIT or self._torch_generator is not None:
            return self._torch_permutation(size)
        values = list(range(size))
        if size < 2:
            return values
        draws = self._state.randint(0, 2**32, size=size - 1, dtype=np.uint64)  # one 32-bit draw per swap
        self._drawn = True
        spans = np.arange(size, 1, -1, dtype=np.uint64)  # n - i for i in [0, n - 1)
        targets = (np.arange(size - 1, dtype=np.uint64) + draws % spans).tolist()
        for position, target in enumerate(targets):
            values[position], values[target] = values[target], values[position]
        return values

    def _torch_permutation(self, size: int) -> list[int]:
        """Sizes from TORCH_SMALL_N_LIMIT on take torch's 64-bit path: torch draws them, and every later one."""
        import torch

        if self._torch_generator is None:
            if self._drawn:
                raise ValueError(f"a permutation of {size} items (over {TORCH_SMALL_N_LIMIT:,}) must be drawn first")
            self._torch_generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(size, generator=self._torch_generator).tolist()


def seeded_permutation(size: int, seed: int) -> list[int]:
    """``torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()``, without torch."""
    return SeededShuffler(seed).permutation(size)
