"""The LightningModule: any network (zoo, graft spec, torchvision/timm) trained as an image classifier.

One ``_step(batch, stage)`` serves training, validation and test. Training adds MixUp/CutMix, label smoothing and
DeiT distillation; evaluation logs loss and top-1/top-5 accuracy (torchmetrics, reduced across processes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import GradientAccumulationScheduler
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2
from typing_extensions import override

from attngraft import validation
from attngraft.errors import AttngraftError, ConfigError, TrainingError
from attngraft.grafting import GraftedModel
from attngraft.grafting.backbone import classifier_name, evaluating, first_conv_name, forward_until, probe_sample
from attngraft.grafting.weights import load_weights, read_state_dict
from attngraft.train.network import NetworkArgument, NetworkConfig, build_network, describe_network
from attngraft.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    OptimizerConfig,
    create_optimizer,
    create_schedule,
    parameter_groups,
    set_schedule_length,
)

logger = logging.getLogger(__name__)
DISTILLATION = ("hard", "soft")
CHECKPOINT_KEY = "attngraft"  # a checkpoint's entry with what attngraft adds (the trained network's class)
EPOCH_METRICS_KEY = "attngraft_epoch_metrics"  # the running state of the epoch's training metrics
UNDESCRIBED_NETWORK = (
    "model.network is missing: this classifier was trained on a network module that attngraft cannot rebuild "
    "from a description (not made by attngraft.build or create_model); pass the same module again, e.g. "
    "ImageClassifier.load_from_checkpoint(path, network=module)"
)
Batch = tuple[torch.Tensor, torch.Tensor]


class ImageClassifier(L.LightningModule):
    """Trains ``network`` to classify images.

    Example:
        >>> resnet = torchvision.models.resnet18()  # doctest: +SKIP
        >>> network = attngraft.graft(resnet, Head("graph", stage="layer3"), num_classes=10)  # doctest: +SKIP
        >>> L.Trainer(max_epochs=1).fit(ImageClassifier(network), datamodule=data)  # doctest: +SKIP

    Args:
        network: What to train: a module (trained as it is, e.g. a grafted torchvision model), a zoo name
            (``resnet18``), ``torchvision/<name>``/``timm/<name>``, a zoo mapping (``{name: vit, img_size: 28}``),
            a graft spec mapping, or a graft spec YAML path. A module is not saved in the hyperparameters; its
            description is, when it has one (:func:`~attngraft.train.network.describe_network`: a spec-built
            graft, a zoo model), so its checkpoints reload with :meth:`load_from_checkpoint` alone. Otherwise
            pass the same module again: ``ImageClassifier.load_from_checkpoint(path, network=module)``.
        num_classes: Classes (linked from the data module by the CLI). None: a module's own output count (its
            classifier's, or a grafted model's probed output); 10 for a described network.
        in_chans: Image channels (linked from the data module by the CLI). None: a grafted module's own; 1 for a
            described network.
        backbone_weights: Weights file for a graft spec's backbone, replacing the spec's ``weights``.
        optimizer: "adamw" or "sgd".
        lr: Peak learning rate (of the grafted parameters, for a grafted model).
        backbone_lr: Peak learning rate of trainable backbone parameters; None: ``lr``.
        weight_decay: Decay of weight matrices; norms, biases, positions and tokens are not decayed.
        momentum: SGD momentum (Nesterov).
        schedule: "cosine" (with ``warmup_epochs`` of linear warmup), "onecycle" or "constant"; stepped per step.
        warmup_epochs: Warmup of the cosine schedule, in epochs.
        label_smoothing: Cross-entropy label smoothing.
        mixup_alpha: MixUp's Beta(α, α); 0 turns it off.
        cutmix_alpha: CutMix's Beta(α, α); 0 turns it off. With both on, each batch uses one of the two.
        distillation: "hard" or "soft" DeiT distillation from ``teacher``; None turns it off.
        teacher: The teacher network (same forms as ``network``).
        teacher_weights: The teacher's weights: a checkpoint or weights file of an earlier run.
        distill_alpha: Weight of the distillation loss (soft distillation; hard uses 1/2).
        distill_temperature: Softmax temperature of soft distillation.
        channels_last: Run convolutions in channels-last memory format.
        compile: Compile the network with ``torch.compile``.
    """

    def __init__(
        self,
        network: NetworkArgument | None = "resnet18",
        *,
        num_classes: int | None = None,
        in_chans: int | None = None,
        backbone_weights: str | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        distillation: str | None = None,
        teacher: NetworkConfig | None = None,
        teacher_weights: str | None = None,
        distill_alpha: float = 0.5,
        distill_temperature: float = 1.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if network is None:
            raise ConfigError(UNDESCRIBED_NETWORK)
        if isinstance(network, nn.Module):
            self.save_hyperparameters(ignore=["network"])
            self.hparams["network"] = describe_network(network)  # None: loading needs the module again
        else:
            self.save_hyperparameters()
            if isinstance(network, Path):
                self.hparams["network"] = str(network)
        num_classes, in_chans = _sizes(network, num_classes, in_chans)
        self.hparams.update(num_classes=num_classes, in_chans=in_chans)
        self.optim = OptimizerConfig(optimizer, lr, backbone_lr, weight_decay, momentum, schedule, warmup_epochs)
        _check_config(self.optim, label_smoothing, mixup_alpha, cutmix_alpha, distill_alpha, distill_temperature)
        self.network = _network(network, num_classes, in_chans, backbone_weights)
        self.teacher = _build_teacher(distillation, teacher, teacher_weights, num_classes, in_chans)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.distillation = distillation
        self.distill_alpha = distill_alpha
        self.distill_temperature = distill_temperature
        self.channels_last = channels_last
        self.mix = _mixing(mixup_alpha, cutmix_alpha, num_classes)
        # The head's forward while batches hold cached backbone features (set by attngraft.train.cache), else None.
        self._features_forward: Callable[[torch.Tensor], Any] | None = None
        self.metrics = nn.ModuleDict(
            {f"{stage}_metrics": _accuracy(num_classes, stage) for stage in ("train", "val", "test")}
        )
        # The epoch's mean training loss as a metric, so its running state can be checkpointed mid-epoch.
        self.metrics["train_loss"] = MeanMetric()
        self._pending_epoch_metrics: dict[str, Any] | None = None
        if self.teacher is not None and hasattr(self.network, "distilled_training"):
            setattr(self.network, "distilled_training", True)  # noqa: B010  # DeiT: (class, distillation) logits in training
        # A compiled forward function, not a module: the compiled wrapper must not add its own state-dict keys.
        self._forward = torch.compile(self.network.forward) if compile else self.network.forward
        if channels_last:
            self.network.to(memory_format=torch.channels_last)

    @override
    def forward(self, x: torch.Tensor) -> Any:
        """Logits for images ``x`` (B, C, H, W), or for backbone features while features are cached."""
        if self._features_forward is not None:
            return self._features_forward(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._forward(x)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Records the trained network's class and the running state of the epoch's training metrics.

        The class lets a loader say what to pass when the network has no description; the metric states let a run
        resumed mid-epoch report the whole epoch.
        """
        network = self.network
        checkpoint[CHECKPOINT_KEY] = {
            "network_type": f"{type(network).__module__}.{type(network).__qualname__}",
            "described": self.hparams.get("network") is not None,
        }
        checkpoint[EPOCH_METRICS_KEY] = {
            "epoch": self.current_epoch,
            "metrics": {name: _metric_state(metric) for name, metric in self._epoch_metrics().items()},
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keeps the saved training-metric states until the first training batch (see :meth:`on_train_batch_start`)."""
        self._pending_epoch_metrics = checkpoint.get(EPOCH_METRICS_KEY)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """After a mid-epoch resume, puts back the epoch's training-metric states as they were when saved.

        Only when training continues the epoch the checkpoint was saved in (a checkpoint saved at an epoch's end
        starts the next epoch afresh) and in a single process (under DDP each process holds its own states).
        """
        saved, self._pending_epoch_metrics = self._pending_epoch_metrics, None
        if saved is None or saved["epoch"] != self.current_epoch or self.trainer.world_size > 1:
            return
        metrics = self._epoch_metrics()
        for name, state in saved["metrics"].items():
            if name in metrics and state is not None:
                _load_metric_state(metrics[name], state)

    def _epoch_metrics(self) -> dict[str, Metric]:
        """The training metrics that accumulate over an epoch, by name."""
        collection = cast(MetricCollection, self.metrics["train_metrics"])
        return {**dict(collection.items(keep_base=True)), "train_loss": cast(Metric, self.metrics["train_loss"])}

    @override
    def setup(self, stage: str) -> None:
        """Runs the network once on a blank image of the data's shape, so a misfit fails now with a clear message.

        Without this a network that cannot take the data's images (a 3x3 kernel on 1x1 maps, a pooling to nothing)
        would fail in the middle of the first step, with PyTorch's words.
        """
        shape = getattr(getattr(self.trainer, "datamodule", None), "input_shape", None)
        if shape is None:
            return
        parameter = next(self.network.parameters(), None)
        blank = torch.zeros(1, *shape, device=parameter.device if parameter is not None else None)
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                self.network(blank)
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[0]
            size = "x".join(map(str, shape))
            raise ConfigError(
                f"model.network cannot run on the data's {size} images (data.image_size): {reason}"
            ) from None
        finally:
            self.network.train(was_training)

    # --- frozen-feature caching -------------------------------------------------------------------------------

    def feature_split(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module] | str:
        """The frozen part (images → features) and the trained tail (features → logits), or why there is none.

        Features can be cached when the network is a grafted model with a head whose backbone part has no
        trainable parameter, no graft inside it, and nothing that behaves randomly or updates statistics in
        training mode; and when no MixUp/CutMix or teacher needs the images.
        """
        network = self.network
        if not isinstance(network, GraftedModel) or network.head_stage is None:
            return "the network has no head graft to train on cached backbone features"
        if self.mix is not None or self.teacher is not None:
            return "MixUp/CutMix or distillation need the images in every step"
        if network.hooks or any(record.mode != "head" for record in network.records):
            return "insert or replace grafts run inside the backbone"
        if any(parameter.requires_grad for parameter in network.backbone.parameters()):
            return "backbone parameters are trainable"
        was_training = network.training
        network.train()
        moving = [
            name for name, module in network.backbone.named_modules() if module.training and _is_stochastic(module)
        ]
        network.train(was_training)
        if moving:
            return f"backbone modules change in training mode: {', '.join(moving[:3])}"
        backbone, stage = network.backbone, network.head_stage
        return (lambda images: forward_until(backbone, stage, images)), network.grafts["head"]

    @property
    def cached(self) -> bool:
        """Whether batches hold cached backbone features (only the tail runs)."""
        return self._features_forward is not None

    def use_cached_features(self, tail: nn.Module | None) -> None:
        """Runs only ``tail`` (from :meth:`feature_split`) on batches of features; None: images again."""
        self._features_forward = None if tail is None else tail.forward

    # --- steps --------------------------------------------------------------------------------------------------

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        targets = labels
        if self.mix is not None:
            images, targets = self.mix(images, labels)  # targets: (B, num_classes) mixed one-hot
        outputs = self(images)
        self._checked(class_logits(outputs))
        loss = self._loss(outputs, targets, images)
        if not self._all_finite(loss):
            raise TrainingError(self._non_finite_message(loss, batch_idx))
        self.log("train_loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(labels))
        mean_loss = cast(MeanMetric, self.metrics["train_loss"])
        mean_loss.update(loss.detach(), len(labels))
        self.log("train_loss_epoch", mean_loss, on_step=False, on_epoch=True, batch_size=len(labels))
        if targets.ndim == 1:
            self._log_accuracy("train", class_logits(outputs), labels)
        return loss

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @override
    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities (B, num_classes)."""
        return class_logits(self(batch[0])).softmax(dim=-1)

    def _evaluate(self, batch: Batch, stage: str) -> None:
        images, labels = batch
        logits = self._checked(class_logits(self(images)))
        loss = F.cross_entropy(logits, labels)
        self.log(f"{stage}_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(labels))
        self._log_accuracy(stage, logits, labels)

    def _checked(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, num_classes), or a clear error when the network outputs another number of classes."""
        if logits.ndim != 2 or logits.shape[-1] != self.num_classes:
            raise ConfigError(
                f"the network outputs logits of shape {tuple(logits.shape)} but the classifier expects "
                f"(batch, {self.num_classes}) for num_classes={self.num_classes}: make the network's classifier "
                "match the data (attngraft.graft(..., num_classes=N) re-initialises it)"
            )
        return logits

    def _log_accuracy(self, stage: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        metrics = cast(MetricCollection, self.metrics[f"{stage}_metrics"])
        metrics(logits, labels)
        self.log_dict(metrics, prog_bar=stage != "train", on_step=False, on_epoch=True, batch_size=len(labels))

    def _loss(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return F.cross_entropy(class_logits(outputs), targets, label_smoothing=self.label_smoothing)
        head_logits, distill_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        with torch.no_grad():
            teacher_logits = class_logits(self.teacher(images))
        base = F.cross_entropy(head_logits, targets, label_smoothing=self.label_smoothing)
        if self.distillation == "hard":
            return 0.5 * base + 0.5 * F.cross_entropy(distill_logits, teacher_logits.argmax(dim=-1))
        temperature = self.distill_temperature
        divergence = F.kl_div(
            F.log_softmax(distill_logits / temperature, dim=-1),
            F.log_softmax(teacher_logits / temperature, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return (1 - self.distill_alpha) * base + self.distill_alpha * temperature**2 * divergence

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (all stop together, so none waits in an all-reduce)."""
        finite = bool(torch.isfinite(loss))
        if self._trainer is not None and self._trainer.world_size > 1:
            finite = bool(self._trainer.strategy.reduce_boolean_decision(finite, all=True))
        return finite

    def _non_finite_message(self, loss: torch.Tensor, batch_idx: int) -> str:
        saved = [
            Path(path)
            for callback in getattr(self._trainer, "checkpoint_callbacks", [])
            for path in (getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", ""))
            if path and Path(path).is_file()
        ]
        checkpoint = max(saved, key=lambda path: path.stat().st_mtime_ns) if saved else "none saved yet"
        return (
            f"training loss is {loss.item()} (on this or another process) at step {self.global_step} "
            f"(epoch {self.current_epoch}, batch {batch_idx}); stopped before updating the weights. "
            f"Last good checkpoint: {checkpoint}. "
            "Try a lower model.lr, gradient clipping (--trainer.gradient_clip_val 1.0) or fp32 precision."
        )

    # --- optimisation -------------------------------------------------------------------------------------------

    @override
    def train(self, mode: bool = True) -> Self:
        """Sets the mode; a distillation teacher stays in eval mode (no dropout, fixed statistics).

        A grafted network keeps its frozen norms in eval mode itself (``GraftedModel.train``).
        """
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @override
    def configure_optimizers(self) -> Any:
        new = _new_prefixes(self.network)
        groups = parameter_groups(self.network, self.optim, new)
        if not groups:
            raise ConfigError("model.network has no trainable parameter (is everything frozen?)")
        optimizer = create_optimizer(groups, self.optim, allow_fused=self._fused_allowed())
        schedule = create_schedule(optimizer, self.optim)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _fused_allowed(self) -> bool:
        """Fused optimisers, except where Lightning cannot clip their gradients (mixed precision with clipping)."""
        trainer = self._trainer
        if trainer is None:
            return True
        mixed = str(trainer.precision).endswith("-mixed")
        return not (mixed and trainer.gradient_clip_val is not None and trainer.gradient_clip_val > 0)

    @override
    def on_train_start(self) -> None:
        """Gives the schedule the run's length, now that the loaders (and a resumed position) are set up."""
        total_steps, steps_per_epoch = _planned_steps(self.trainer)
        for config in self.trainer.lr_scheduler_configs:
            set_schedule_length(config.scheduler, total_steps, min(steps_per_epoch, total_steps))


def _planned_steps(trainer: L.Trainer) -> tuple[int, int]:
    """(optimiser steps of the whole run, optimiser steps of the first epoch).

    Lightning's estimate assumes the accumulation of the first epoch throughout; with a
    ``GradientAccumulationScheduler`` the run's epochs are counted one by one, so the schedule still ends at zero.
    """
    batches = trainer.num_training_batches
    scheduler = next((cb for cb in trainer.callbacks if isinstance(cb, GradientAccumulationScheduler)), None)  # type: ignore[attr-defined]
    max_epochs = trainer.max_epochs or -1
    if scheduler is None or max_epochs < 1 or trainer.max_steps != -1 or math.isinf(batches):
        total = max(1, int(trainer.estimated_stepping_batches))
        if math.isinf(batches):
            return total, total
        return total, max(1, math.ceil(batches / trainer.accumulate_grad_batches))
    per_epoch = [math.ceil(batches / scheduler.get_accumulate_grad_batches(epoch)) for epoch in range(max_epochs)]
    return max(1, sum(per_epoch)), max(1, per_epoch[0])


def _check_config(
    optim: OptimizerConfig, label_smoothing: float, mixup: float, cutmix: float, alpha: float, temperature: float
) -> None:
    """Rejects invalid values before anything is built, naming the config key."""
    validation.choice(optim.name, "model.optimizer", list(OPTIMIZERS))
    validation.choice(optim.schedule, "model.schedule", list(SCHEDULES))
    validation.positive_number(optim.lr, "model.lr")
    if optim.backbone_lr is not None:
        validation.number(optim.backbone_lr, "model.backbone_lr", minimum=0)
    for key, value in (
        ("weight_decay", optim.weight_decay),
        ("warmup_epochs", optim.warmup_epochs),
        ("mixup_alpha", mixup),
        ("cutmix_alpha", cutmix),
    ):
        validation.number(value, f"model.{key}", minimum=0)
    for key, value in (("momentum", optim.momentum), ("label_smoothing", label_smoothing)):
        validation.number(value, f"model.{key}", minimum=0, below=1)
    validation.number(alpha, "model.distill_alpha", minimum=0, maximum=1)
    validation.positive_number(temperature, "model.distill_temperature")


def _sizes(network: NetworkArgument, num_classes: int | None, in_chans: int | None) -> tuple[int, int]:
    """(classes, channels): as given, else a module's own, else the defaults of a described network (10, 1)."""
    if not isinstance(network, nn.Module):
        return num_classes or 10, in_chans or 1
    if in_chans is None:
        in_chans = network.in_chans if isinstance(network, GraftedModel) else _first_conv_channels(network)
    if num_classes is None:
        num_classes = output_count(network, in_chans)
    return num_classes, in_chans


def _first_conv_channels(network: nn.Module) -> int:
    try:
        return int(getattr(network.get_submodule(first_conv_name(network)), "in_channels", 3))
    except AttngraftError:
        return 3


def output_count(network: nn.Module, in_chans: int) -> int:
    """Classes a module outputs: a grafted model's on its probe input, else its classifier's (Linear or 1×1 conv).

    Raises:
        ConfigError: When neither tells, asking for ``num_classes``.
    """
    if isinstance(network, GraftedModel):
        sample = probe_sample(network, in_chans=in_chans, image_size=network.image_size)
        with evaluating(network):
            return int(class_logits(network(sample)).shape[-1])
    name = classifier_name(network)
    classifier = network.get_submodule(name) if name is not None else None
    count = getattr(classifier, "out_features", getattr(classifier, "out_channels", None))
    if not isinstance(count, int):
        raise ConfigError(f"set num_classes: cannot tell how many classes {type(network).__name__} outputs")
    return count


def _network(network: NetworkArgument, num_classes: int, in_chans: int, backbone_weights: str | None) -> nn.Module:
    """The module to train: ``network`` itself when it is one, else built from its description."""
    if not isinstance(network, nn.Module):
        return build_network(network, num_classes=num_classes, in_chans=in_chans, backbone_weights=backbone_weights)
    if backbone_weights is not None:
        raise ConfigError(
            "model.backbone_weights applies to a network described as data; load a module's weights yourself"
        )
    return network


def _build_teacher(
    distillation: str | None, teacher: NetworkConfig | None, weights: str | None, num_classes: int, in_chans: int
) -> nn.Module | None:
    if distillation is None:
        return None
    if distillation not in DISTILLATION:
        raise ConfigError(f"model.distillation: expected one of {list(DISTILLATION)} or null, got {distillation!r}")
    if teacher is None or weights is None:
        raise ConfigError("model.distillation needs model.teacher (a network) and model.teacher_weights (a file)")
    network = build_network(teacher, num_classes=num_classes, in_chans=in_chans)
    load_weights(network, read_state_dict(weights), source=weights, stem=first_conv_name(network), classifier=None)
    network.requires_grad_(False)
    return network.eval()


def _mixing(mixup: float, cutmix: float, num_classes: int) -> Callable[..., Any] | None:
    """Torchvision's batch MixUp/CutMix (one of the two per batch when both are on), or None."""
    choices = [v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []
    choices += [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else []
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


def _metric_state(metric: Metric) -> dict[str, Any] | None:
    """A metric's running state as tensors and an int (None when a state is a list: not saved)."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in metric.metric_state.items():
        if not isinstance(value, torch.Tensor):
            return None
        tensors[key] = value.detach().cpu()
    return {"update_count": metric._update_count, "states": tensors}


def _load_metric_state(metric: Metric, saved: dict[str, Any]) -> None:
    for key, value in saved["states"].items():
        current = getattr(metric, key)
        setattr(metric, key, value.to(device=current.device, dtype=current.dtype))
    metric._update_count = int(saved["update_count"])
    metric._computed = None


def _accuracy(num_classes: int, stage: str) -> MetricCollection:
    metrics: dict[str, Any] = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=f"{stage}_")


def class_logits(outputs: Any) -> torch.Tensor:
    """The class logits of a network's output: DeiT's (class, distillation) pair averages to one."""
    if isinstance(outputs, tuple):
        return (outputs[0] + outputs[1]) / 2
    return outputs


def _new_prefixes(network: nn.Module) -> tuple[str, ...]:
    """Name prefixes of grafted parameters (empty for a network that is all new)."""
    if not isinstance(network, GraftedModel):
        return ()
    return ("grafts", *(f"backbone.{name}" for name in network.new_modules))


def _is_stochastic(module: nn.Module) -> bool:
    """Modules whose training-mode output is random or whose statistics move."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if type(module).__name__ == "DropPath":
        return float(getattr(module, "drop_prob", 1.0)) > 0
    # BatchNorm in training mode normalises with batch statistics (and may update running ones).
    return isinstance(module, nn.modules.batchnorm._BatchNorm)
