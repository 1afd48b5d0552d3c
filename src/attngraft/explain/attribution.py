"""Pixel attributions with Captum: Integrated Gradients, Saliency, Occlusion and LayerGradCam.

Every method returns one (B, H, W) map per image: the attribution of the target class's logit to each pixel, summed
over the image's channels (Occlusion: averaged, as it gives every channel of a patch the same value; GradCam: the
layer's map upsampled bilinearly to the image).
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass

import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency
from torch import nn
from typing_extensions import override

from attngraft.errors import ConfigError
from attngraft.grafting.backbone import evaluating
from attngraft.registry import Registry
from attngraft.train.module import class_logits


@dataclass(frozen=True)
class AttributionSettings:
    """Method settings.

    Attributes:
        steps: Integrated Gradients' Riemann steps.
        baseline: Per-channel value, in the network's input space, of Integrated Gradients' starting image and of
            Occlusion's patches; empty: 0 (the dataset mean after normalisation). The explainer sets the black
            image (see :func:`~attngraft.explain.explainer.with_black_baseline`).
        occlusion_window: Side of Occlusion's square patch; None: a seventh of the image side (at least 2).
        gradcam_layer: Module path of GradCAM's layer; None: :func:`default_gradcam_layer`.
    """

    steps: int = 32
    baseline: tuple[float, ...] = ()
    occlusion_window: int | None = None
    gradcam_layer: str | None = None


@dataclass(frozen=True)
class AttributionMethod:
    """A registered attribution method.

    Attributes:
        title: Figure title.
        sign: Which values the figure shows (Captum's ``sign``: "all", "positive", "absolute_value").
        compute: ``(logits model, images, targets, settings) → (B, H, W)``.
    """

    title: str
    sign: str
    compute: Callable[[nn.Module, torch.Tensor, torch.Tensor, AttributionSettings], torch.Tensor]


METHODS: Registry[AttributionMethod] = Registry("attribution method")


class ClassLogits(nn.Module):
    """A network's class logits as a plain tensor (DeiT's (class, distillation) pair averaged), for Captum.

    Shape:
        - Input: (B, C, H, W).
        - Output: (B, classes).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return class_logits(self.network(images))


def attribute(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    settings: AttributionSettings | None = None,
) -> torch.Tensor:
    """Attributes each image's ``targets`` logit to its pixels with ``method`` (see :data:`METHODS`).

    Args:
        model: Images → class logits (wrap a network in :class:`ClassLogits`), in eval mode.
        images: The (normalised) images.
        targets: Class index per image.
        method: A registered method name.
        settings: Method settings.

    Shape:
        - images: (B, C, H, W).
        - Output: (B, H, W).
    """
    entry = METHODS.get(method)
    with torch.enable_grad():
        maps = entry.compute(
            model, images.detach().clone().requires_grad_(True), targets, settings or AttributionSettings()
        )
    return maps.detach()


def _integrated_gradients(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, settings: AttributionSettings
) -> torch.Tensor:
    method = IntegratedGradients(model)
    baselines = _baseline(images, settings)
    maps = method.attribute(images, baselines=baselines, target=targets, n_steps=settings.steps, internal_batch_size=64)
    return maps.sum(dim=1)  # (B, H, W)


def _baseline(images: torch.Tensor, settings: AttributionSettings) -> torch.Tensor:
    """The baseline image(s) of ``settings`` shaped like ``images``."""
    if not settings.baseline:
        return torch.zeros_like(images)
    if len(settings.baseline) != images.shape[1]:
        raise ValueError(f"baseline has {len(settings.baseline)} channel values, the images {images.shape[1]} channels")
    values = torch.tensor(settings.baseline, dtype=images.dtype, device=images.device)
    return values.view(1, -1, 1, 1).expand_as(images).contiguous()


def _saliency(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, settings: AttributionSettings
) -> torch.Tensor:
    return Saliency(model).attribute(images, target=targets, abs=True).sum(dim=1)  # (B, H, W)


def _occlusion(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, settings: AttributionSettings
) -> torch.Tensor:
    channels, height, width = images.shape[1:]
    window = settings.occlusion_window or max(2, min(height, width) // 7)
    stride = max(1, window // 2)
    maps = Occlusion(model).attribute(
        images,
        sliding_window_shapes=(channels, window, window),
        strides=(channels, stride, stride),
        target=targets,
        baselines=_baseline(images[:1], settings),
        perturbations_per_eval=16,
    )
    return maps.mean(dim=1)  # (B, H, W)


def _gradcam(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, settings: AttributionSettings
) -> torch.Tensor:
    name = settings.gradcam_layer or default_gradcam_layer(model, images[:1])
    layer = _submodule(model, name)
    maps = LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)  # (B, 1, h, w)
    if maps.ndim != 4:
        raise ConfigError(
            f"gradcam layer {name!r} outputs {tuple(maps.shape[1:])} per image, not a (channels, height, width) map"
        )
    return LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), "bilinear")[:, 0]  # (B, H, W)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    """``model``'s module ``name``, also found relative to a :class:`ClassLogits` wrapper's network."""
    for candidate in (name, f"network.{name}"):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise ConfigError(f"gradcam layer {name!r} is not a module of the network (see its named_modules())")


def default_gradcam_layer(model: nn.Module, image: torch.Tensor) -> str:
    """The last module run that holds a convolution and outputs a spatial (B, C, h, w) map with h·w > 1.

    For a ResNet this is its last stage (``layer4``), for a grafted head the head's patch embedding (the map its
    attention reads), for a ViT the patch embedding.

    Raises:
        ConfigError: If no such module runs.
    """
    order: list[str] = []
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
                order.append(name)

        return hook

    for name, module in model.named_modules():
        if name and any(isinstance(child, nn.Conv2d) for child in module.modules()):
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad(), evaluating(model):
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise ConfigError(
            f"{type(model).__name__} runs no convolution with a spatial output: name one with --gradcam-layer, "
            "or leave gradcam out of --methods"
        )
    return order[-1]


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter re-initialised: the model-randomisation sanity check's reference.

    Adebayo et al. (2018): an attribution method that explains the model must give different maps once the learned
    weights are gone. Modules re-initialise through their ``reset_parameters`` (convolutions, linear layers, norms);
    parameters of modules without one are redrawn from a normal distribution of their own standard deviation.
    """
    copy = deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        reset: set[int] = set()
        for module in copy.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
                reset.update(id(parameter) for parameter in module.parameters(recurse=False))
        with torch.no_grad():
            for parameter in copy.parameters():
                if id(parameter) not in reset:
                    scale = float(parameter.std()) if parameter.numel() > 1 else 0.02
                    parameter.normal_(0.0, scale if scale > 0 else 0.02)
    finally:
        torch.random.set_rng_state(generator_state)
    return copy


METHODS.add("ig", AttributionMethod("Integrated Gradients", "all", _integrated_gradients))
METHODS.add("saliency", AttributionMethod("Saliency", "absolute_value", _saliency))
METHODS.add("occlusion", AttributionMethod("Occlusion", "positive", _occlusion))
METHODS.add("gradcam", AttributionMethod("GradCAM", "positive", _gradcam))
