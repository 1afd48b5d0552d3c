from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from attngraft.train.callbacks import AtomicCheckpointIO, RandomState


def test_random_state_round_trips_through_a_weights_only_checkpoint() -> None:
    callback = RandomState()
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    buffer = io.BytesIO()
    torch.save({"state": callback.state_dict()}, buffer)
    expected = (torch.rand(3), np.random.rand(3), random.random())

    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    buffer.seek(0)
    restored = RandomState()
    restored.load_state_dict(torch.load(buffer, weights_only=True)["state"])
    restored.on_train_batch_start(None, None, None, 0)  # type: ignore[arg-type]
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    torch.manual_seed(5)
    restored.on_train_batch_start(None, None, None, 1)  # type: ignore[arg-type]
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # restored only once: later batches keep their own state


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"step": torch.tensor(1)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1

    def crash(obj: object, file: object) -> None:
        Path(str(file)).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        writer.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert [child.name for child in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
