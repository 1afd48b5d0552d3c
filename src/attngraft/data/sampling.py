"""Shuffled training order whose every sample carries its own augmentation seed, for exact resumption.

Random augmentations (crops, flips, RandAugment) draw from the process's global generators. Those are not where a
resumed run left them: in the main process Lightning fetches a batch ahead, so its augmentations are drawn before a
checkpoint's random state is restored, and loader processes start from fresh seeds. So a run killed mid-epoch and
resumed would augment differently from an uninterrupted one. Here the sampler draws, with its own generator, one
seed per epoch beside the permutation, and hands the dataset ``(index, seed)`` pairs whose seed is a function of
(epoch seed, index); the dataset augments each image under that seed (:func:`seeded_random`) and puts the global
generators back. The generator's state at the start of the epoch and the count of samples given are the sampler's
checkpointed state (the loader saves it), so a resumed loader gives the same pairs from where it stopped, in the
main process and in loader processes alike.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

_GOLDEN = 0x9E3779B97F4A7C15  # odd: index -> index * _GOLDEN is one-to-one modulo 2**63
SEED_MODULUS = 2**63


def sample_seed(epoch_seed: int, index: int) -> int:
    """The augmentation seed of item ``index`` in the epoch whose seed is ``epoch_seed`` (distinct per index)."""
    return (epoch_seed + index * _GOLDEN) % SEED_MODULUS


@contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """Runs the block with torch's CPU, Python's and NumPy's global generators seeded by ``seed``, then restores them.

    Only the CPU generator of torch is touched (``torch.manual_seed`` would reseed every CUDA device too).
    """
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class SeededRandomSampler(Sampler[tuple[int, int]]):
    """A random order of ``data_source``'s items, each given as ``(index, augmentation seed)``.

    Args:
        data_source: The dataset (its length is what is shuffled).
        generator: Draws each epoch's permutation and epoch seed; nothing else may draw from it.
    """

    def __init__(self, data_source: Sized, generator: torch.Generator) -> None:
        self.data_source = data_source
        self.generator = generator

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return _SeededIterator(self)

    def __len__(self) -> int:
        return len(self.data_source)


class _SeededIterator(Iterator[tuple[int, int]]):
    """One epoch of :class:`SeededRandomSampler`; its state (torchdata's ``Stateful``) resumes it mid-epoch.

    The epoch is drawn on the first item asked for, not on creation: a loader with worker processes creates its
    sampler iterator twice before using the second, and the order must not depend on the number of workers.
    """

    def __init__(self, sampler: SeededRandomSampler) -> None:
        self.sampler = sampler
        self.generator_state = sampler.generator.get_state()
        self.yielded = 0
        self.order: list[int] | None = None
        self.epoch_seed = 0

    def _draw(self) -> list[int]:
        generator = self.sampler.generator
        self.order = torch.randperm(len(self.sampler.data_source), generator=generator).tolist()
        self.epoch_seed = int(torch.randint(0, SEED_MODULUS - 1, (), generator=generator))
        return self.order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self

    def __next__(self) -> tuple[int, int]:
        order = self._draw() if self.order is None else self.order
        if self.yielded >= len(order):
            raise StopIteration
        index = order[self.yielded]
        self.yielded += 1
        return index, sample_seed(self.epoch_seed, index)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state at the start of this epoch and the number of items given."""
        return {"yielded": self.yielded, "generator": self.generator_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continues the epoch of ``state_dict`` after its last given item."""
        self.generator_state = state_dict["generator"]
        self.sampler.generator.set_state(self.generator_state)
        self._draw()
        self.yielded = int(state_dict["yielded"])
