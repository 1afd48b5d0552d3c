from pathlib import Path

import pytest
import torch

from attngraft.grafting import build, load_spec, summarize
from attngraft.recipes import packaged_directory

CONFIGS = sorted((packaged_directory() / "grafts").glob("*.yaml"))


def test_there_are_example_specs() -> None:
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_every_example_spec_builds_and_runs(path: Path) -> None:
    spec = load_spec(path)
    model = build(path).eval()
    size = model.image_size
    with torch.no_grad():
        logits = model(torch.randn(1, spec["in_chans"] or 3, size, size))
    assert logits.shape == (1, spec["num_classes"])
    summary = summarize(model)
    assert summary.trainable == sum(row.params for row in summary.grafts)
    assert summary.trainable < summary.total / 4  # freeze: backbone leaves most of the model frozen
