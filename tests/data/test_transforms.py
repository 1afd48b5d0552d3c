import numpy as np
import pytest
import torch
from PIL import Image

from attngraft.data import RepeatChannels, build_transform


def test_repeat_channels() -> None:
    grey = torch.rand(1, 5, 6)
    rgb = RepeatChannels(3)(grey)
    assert rgb.shape == (3, 5, 6)
    torch.testing.assert_close(rgb[2], grey[0])
    assert RepeatChannels(3)(rgb) is rgb
    with pytest.raises(ValueError, match="cannot turn 2 channels into 3"):
        RepeatChannels(3)(torch.rand(2, 5, 6))


def test_build_transform_normalises_with_given_statistics() -> None:
    pixels = np.full((4, 4), 51, dtype=np.uint8)  # 0.2 after scaling
    output = build_transform((0.1,), (0.5,))(Image.fromarray(pixels))
    torch.testing.assert_close(output, torch.full((1, 4, 4), 0.2))


def test_build_transform_resizes_and_replicates_statistics() -> None:
    pixels = np.full((4, 4), 255, dtype=np.uint8)
    output = build_transform((0.5,), (0.25,), image_size=8, channels=3)(Image.fromarray(pixels))
    assert output.shape == (3, 8, 8)
    torch.testing.assert_close(output, torch.full((3, 8, 8), 2.0))


def test_augment_runs_before_conversion() -> None:
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    flip = torch.nn.Module()
    flip.forward = lambda image: image.flip(-1)  # type: ignore[method-assign]
    output = build_transform((0.0,), (1.0,), augment=[flip], normalize=False)(Image.fromarray(pixels))
    torch.testing.assert_close(output[0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]) / 255)
