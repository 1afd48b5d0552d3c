from __future__ import annotations

import math

import pytest
import torch

from attngraft import build, create_model
from attngraft.train.optim import (
    OptimizerConfig,
    create_optimizer,
    create_schedule,
    decays,
    parameter_groups,
    set_schedule_length,
)


def test_no_decay_on_norms_biases_positions_and_tokens() -> None:
    model = create_model("vit", num_classes=10, in_chans=1, img_size=28, patch_size=7, depth=1)
    names = {name: decays(name, parameter) for name, parameter in model.named_parameters()}
    assert not names["pos_embed"]
    assert not names["cls_token"]
    assert not any(decay for name, decay in names.items() if name.endswith(".bias") or ".norm" in name)
    assert names["patch_embed.weight"]
    assert names["layers.0.mixer.qkv.weight"]
    assert names["head.weight"]


def test_groups_split_new_and_backbone_rates() -> None:
    model = build(
        {
            "backbone": "attngraft/resnet18",
            "in_chans": 1,
            "num_classes": 10,
            "image_size": 32,
            "graft": [{"mode": "insert", "block": "se", "after": "layer2"}],
            "freeze": "none",
        }
    )
    config = OptimizerConfig(lr=1e-3, backbone_lr=1e-4, weight_decay=0.1)
    groups = {group["name"]: group for group in parameter_groups(model, config, ("grafts",))}
    assert set(groups) == {"new", "new_no_decay", "backbone", "backbone_no_decay"}
    assert groups["new"]["lr"] == 1e-3
    assert groups["backbone"]["lr"] == 1e-4
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == 0.1
    grouped = sum(parameter.numel() for group in groups.values() for parameter in group["params"])
    assert grouped == sum(parameter.numel() for parameter in model.parameters())


def test_frozen_parameters_get_no_group() -> None:
    model = build(
        {
            "backbone": "attngraft/resnet18",
            "in_chans": 1,
            "num_classes": 10,
            "image_size": 32,
            "graft": [{"mode": "head", "block": "mhsa", "stage": "layer3", "embed_dim": 32, "num_heads": 2}],
        }
    )
    groups = parameter_groups(model, OptimizerConfig(), ("grafts",))
    assert {group["name"] for group in groups} <= {"new", "new_no_decay"}
    grouped = sum(parameter.numel() for group in groups for parameter in group["params"])
    assert grouped == sum(parameter.numel() for parameter in model.trainable_parameters())


def _rates(schedule: str, warmup_epochs: float = 0.0, steps: int = 10) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(2, 2))
    config = OptimizerConfig(lr=1.0, schedule=schedule, warmup_epochs=warmup_epochs)
    optimizer = create_optimizer([{"params": [parameter], "lr": 1.0, "weight_decay": 0.0}], config)
    scheduler = create_schedule(optimizer, config)
    set_schedule_length(scheduler, steps, steps_per_epoch=5)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_with_warmup_rises_then_falls_to_zero() -> None:
    rates = _rates("cosine", warmup_epochs=1.0, steps=10)  # 5 warmup steps
    assert rates[0] == pytest.approx(0.01)
    assert rates[:6] == sorted(rates[:6])
    assert rates[5] == pytest.approx(1.0)
    assert rates[5:] == sorted(rates[5:], reverse=True)
    assert rates[-1] < 0.1


def test_onecycle_peaks_inside_and_constant_stays() -> None:
    rates = _rates("onecycle", steps=20)
    peak = rates.index(max(rates))
    assert 0 < peak < 19
    assert max(rates) == pytest.approx(1.0, rel=0.05)
    assert rates[0] == pytest.approx(1 / 25)
    assert rates[-1] < 0.02
    assert set(_rates("constant")) == {1.0}


def test_schedule_counts_steps_of_a_gradient_accumulation_schedule(fashion_mnist_dir) -> None:
    """Accumulating ×2 from epoch 1: 8 + 4 optimiser steps, so the cosine reaches zero at the last one."""
    import lightning as L
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    from attngraft.data.datamodule import ImageDataModule
    from attngraft.train import ImageClassifier

    rates: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    L.seed_everything(0)
    module = ImageClassifier("mnist_cnn", lr=1.0)
    data = ImageDataModule(data_dir=fashion_mnist_dir, batch_size=32, train_size=256, val_size=32, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[GradientAccumulationScheduler({0: 1, 1: 2}), Record()],
    )  # fmt: skip
    trainer.fit(module, data)
    assert trainer.global_step == 12
    assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 11 / 12)), abs=1e-6)  # step 11 of 12
