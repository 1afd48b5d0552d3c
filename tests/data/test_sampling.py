"""Shuffles whose samples carry their augmentation seeds: resumable mid-epoch, independent of loader processes."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from attngraft.data.datamodule import ImageDataModule
from attngraft.data.sampling import SeededRandomSampler, sample_seed, seeded_random


def epochs(sampler: SeededRandomSampler, count: int) -> list[list[tuple[int, int]]]:
    return [list(sampler) for _ in range(count)]


def test_each_epoch_is_a_permutation_with_distinct_seeds_and_the_generator_decides() -> None:
    first, second = epochs(SeededRandomSampler(range(50), torch.Generator().manual_seed(3)), 2)
    assert sorted(index for index, _ in first) == list(range(50))
    assert len({seed for _, seed in first}) == 50
    assert first != second  # a new order and new seeds every epoch
    assert epochs(SeededRandomSampler(range(50), torch.Generator().manual_seed(3)), 2) == [first, second]
    assert epochs(SeededRandomSampler(range(50), torch.Generator().manual_seed(4)), 1)[0] != first


def test_an_epoch_is_drawn_on_first_use_so_unused_iterators_change_nothing() -> None:
    sampler = SeededRandomSampler(range(20), torch.Generator().manual_seed(0))
    iter(sampler)  # a loader with worker processes creates one it never uses
    assert list(iter(sampler)) == epochs(SeededRandomSampler(range(20), torch.Generator().manual_seed(0)), 1)[0]


@pytest.mark.parametrize("stop", [0, 7, 20])
def test_a_saved_iterator_resumes_where_it_stopped(stop: int) -> None:
    sampler = SeededRandomSampler(range(20), torch.Generator().manual_seed(1))
    list(sampler)  # one finished epoch first
    iterator = iter(sampler)
    given = [next(iterator) for _ in range(stop)]
    state = iterator.state_dict()
    rest = list(iterator)
    following = list(sampler)

    fresh = SeededRandomSampler(range(20), torch.Generator().manual_seed(99))  # another process, another state
    resumed = iter(fresh)
    resumed.load_state_dict(state)
    assert given + list(resumed) == given + rest
    assert list(fresh) == following  # and the next epoch is the uninterrupted run's


def test_seeded_random_seeds_every_global_generator_and_puts_them_back() -> None:
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    with seeded_random(123):
        inside = (torch.rand(2), random.random(), np.random.rand())
    with seeded_random(123):
        assert torch.equal(torch.rand(2), inside[0])
        assert (random.random(), np.random.rand()) == inside[1:]
    after = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(after[0], expected[0])
    assert after[1:] == expected[1:]
    assert torch.initial_seed() == 5


def test_sample_seeds_differ_by_index_and_epoch() -> None:
    assert len({sample_seed(epoch, index) for epoch in range(3) for index in range(1000)}) == 3000


def test_augmented_batches_do_not_depend_on_loader_processes(fashion_mnist_dir) -> None:
    batches = {}
    for workers in (0, 2):
        L.seed_everything(42, verbose=False)
        module = ImageDataModule(
            data_dir=fashion_mnist_dir,
            train_size=64,
            val_size=32,
            batch_size=32,
            num_workers=workers,
            train_augment=[v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()],
        )
        module.setup("fit")
        loader = module.train_dataloader()
        batches[workers] = [batch for _ in range(2) for batch in loader]
    for main, workers in zip(batches[0], batches[2], strict=True):
        torch.testing.assert_close(main[0], workers[0], rtol=0, atol=0)
        torch.testing.assert_close(main[1], workers[1], rtol=0, atol=0)
    plain = batches[0][0][0]
    assert not torch.equal(plain, batches[0][2][0])  # the epochs differ
