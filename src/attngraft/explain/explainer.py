"""Explaining a network's predictions: attribution and attention panels per image, and the figures' files.

For each image the predicted class is explained: every attribution method's map, then the attention maps — the
rollout of each transformer's token blocks (class token → patches), and the query-pixel map of the last map block
(by default the most-attributed pixel; all blocks and per-head maps on request).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm  # type: ignore[import-untyped]

from attngraft._io import write_json
from attngraft.data.datamodule import ImageDataModule
from attngraft.errors import ConfigError, DataNotFoundError
from attngraft.explain.attention import (
    AttentionRecord,
    map_position,
    query_map,
    record,
    rollout,
    to_image,
    token_map,
)
from attngraft.explain.attribution import METHODS, AttributionSettings, ClassLogits, attribute
from attngraft.explain.figures import Panel, Row, displayable, draw_rows
from attngraft.explain.inputs import Sample, data_settings, file_samples, load_checkpoint, official_test_samples

logger = logging.getLogger(__name__)
ATTENTION = "attention"
DEFAULT_METHODS = ("ig", "saliency", "occlusion", "gradcam", ATTENTION)
BATCH_SIZE = 16
# A panel title, its maps (B, H, W) and the query pixels (B, 2) to mark on them, if any.
TitledMaps = tuple[str, torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class ExplainSettings:
    """What to draw.

    Attributes:
        methods: Attribution methods (:data:`~attngraft.explain.attribution.METHODS`) and/or "attention".
        attribution: The methods' settings.
        layers: Attention maps of every layer and map block, not only the rollout and the last map block.
        heads: One map per head as well.
        query: Query pixel (row, col) of map blocks in image pixels; None: each image's most-attributed pixel.
    """

    methods: Sequence[str] = DEFAULT_METHODS
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    layers: bool = False
    heads: bool = False
    query: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        valid = [*METHODS.names(), ATTENTION]
        unknown = [method for method in self.methods if method not in valid]
        if unknown or not self.methods:
            raise ConfigError(f"--methods: unknown {unknown or 'empty list'}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class Explanation:
    """One image's prediction and panels.

    Attributes:
        prediction: Predicted class.
        probability: Its softmax probability.
        panels: Attribution and attention maps at the image's size.
        query: The map blocks' query pixel (row, col) in the image, if any map block was drawn.
    """

    prediction: int
    probability: float
    panels: list[Panel]
    query: tuple[int, int] | None


def explain_images(network: nn.Module, images: torch.Tensor, settings: ExplainSettings) -> list[Explanation]:
    """Attributions and attention maps of the predicted class of every image.

    The network runs in eval mode on its own device; its mode is restored afterwards. The attribution baseline is
    ``settings.attribution.baseline`` (0 unless set; :func:`with_black_baseline` sets the black image, as the
    command does). Maps come back on the CPU.

    Shape:
        - images: (B, C, H, W), normalised as in training.

    Returns:
        One :class:`Explanation` per image.
    """
    check_query(settings, images.shape[-2:])
    was_training = network.training
    parameter = next(network.parameters(), None)
    images = images.to(parameter.device) if parameter is not None else images
    try:
        return _explain(ClassLogits(network).eval(), images, settings)
    finally:
        network.train(was_training)


def _explain(model: nn.Module, images: torch.Tensor, settings: ExplainSettings) -> list[Explanation]:
    logits, records = record(model, images) if ATTENTION in settings.methods else (_logits(model, images), [])
    if ATTENTION in settings.methods and not records:
        logger.warning("attention: the network has no attngraft attention block to record (only those are drawn)")
    probabilities = logits.float().softmax(dim=-1).cpu()
    predictions = probabilities.argmax(dim=-1)
    attributions = {
        method: attribute(model, images, predictions.to(images.device), method, settings.attribution).cpu()
        for method in settings.methods
        if method != ATTENTION
    }
    panels: list[list[Panel]] = [
        [
            Panel(METHODS.get(method).title, maps[index], METHODS.get(method).sign)
            for method, maps in attributions.items()
        ]
        for index in range(len(images))
    ]
    queries = _query_pixels(model, images, predictions, attributions, settings) if _map_records(records) else None
    for index, extra in enumerate(attention_panels(records, images.shape[-2:], queries, settings)):
        panels[index] += [Panel(panel.title, panel.values.cpu(), panel.sign, panel.marker) for panel in extra]
    return [
        Explanation(
            int(predictions[index]),
            float(probabilities[index, predictions[index]]),
            panels[index],
            None if queries is None else (int(queries[index, 0]), int(queries[index, 1])),
        )
        for index in range(len(images))
    ]


def check_query(settings: ExplainSettings, image_size: Sequence[int]) -> None:
    """Raises :class:`ConfigError` when the settings' query pixel lies outside images of ``image_size``."""
    if settings.query is None:
        return
    (row, col), (height, width) = settings.query, image_size
    if not (0 <= row < height and 0 <= col < width):
        raise ConfigError(f"--query {row},{col} is outside the {height}×{width} image")


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class logits without gradients (when no attention is recorded)."""
    with torch.no_grad():
        return model(images)


def _map_records(records: Sequence[AttentionRecord]) -> list[AttentionRecord]:
    """The records of map blocks (local, window, non-local), in forward order."""
    return [entry for entry in records if entry.kind != "tokens"]


def _query_pixels(
    model: nn.Module,
    images: torch.Tensor,
    predictions: torch.Tensor,
    attributions: dict[str, torch.Tensor],
    settings: ExplainSettings,
) -> torch.Tensor:
    """(B, 2) query pixels: the setting, else the pixel of largest absolute attribution (saliency if none ran)."""
    width = images.shape[-1]
    if settings.query is not None:
        return torch.tensor([list(settings.query)] * len(images))
    maps = next(iter(attributions.values()), None)
    if maps is None:
        maps = attribute(model, images, predictions.to(images.device), "saliency", settings.attribution).cpu()
    flat = maps.abs().flatten(1).argmax(dim=1)  # (B,)
    return torch.stack([flat // width, flat % width], dim=1)


def attention_panels(
    records: Sequence[AttentionRecord],
    image_size: Sequence[int],
    queries: torch.Tensor | None,
    settings: ExplainSettings,
) -> list[list[Panel]]:
    """Per image: rollout (and per-layer, per-head) maps of token blocks, query maps of map blocks."""
    size = (int(image_size[0]), int(image_size[1]))
    batch = records[0].probabilities.shape[0] if records else 0
    panels: list[list[Panel]] = [[] for _ in range(batch)]
    for group in _token_groups(records):
        _add(panels, _token_panels(group, size, settings))
    maps = _map_records(records)
    if maps and queries is not None:
        for entry in maps if settings.layers else maps[-1:]:
            _add(panels, _query_panels(entry, size, queries, settings))
    return panels


def _add(panels: list[list[Panel]], titled_maps: Iterator[TitledMaps]) -> None:
    """Appends each image's map of every titled batch of maps to that image's panels."""
    for title, maps, markers in titled_maps:
        for index, values in enumerate(maps):
            marker = None if markers is None else (int(markers[index, 0]), int(markers[index, 1]))
            panels[index].append(Panel(title, values, "positive", marker))


def _token_groups(records: Sequence[AttentionRecord]) -> list[list[AttentionRecord]]:
    """Consecutive token records of one transformer (same token count and enclosing encoder), in forward order."""
    groups: list[list[AttentionRecord]] = []
    for entry in records:
        if entry.kind != "tokens":
            continue
        previous = groups[-1][-1] if groups else None
        if (
            previous is not None
            and _encoder(previous.name) == _encoder(entry.name)
            and (previous.probabilities.shape[-1] == entry.probabilities.shape[-1])
        ):
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups


def _encoder(name: str) -> str:
    """The module path up to the last layer index (``stages.1.blocks.3.mixer`` → ``stages.1.blocks``)."""
    match = re.match(r"(.*)\.\d+\.", name)
    return match.group(1) if match else name.rpartition(".")[0]


def _token_panels(
    group: list[AttentionRecord], size: tuple[int, int], settings: ExplainSettings
) -> Iterator[TitledMaps]:
    """One transformer's rollout; with ``layers`` each layer's own map, with ``heads`` per-head maps."""
    first = group[0]
    layers = [entry.probabilities.float() for entry in group]
    combined = token_map(rollout(layers), first.prefix_tokens, first.map_size)  # (B, rows, cols)
    yield f"rollout, {len(group)} layer{'s' * (len(group) > 1)}", to_image(combined, size), None
    chosen = group if settings.layers else ([group[-1]] if settings.heads else [])
    for entry in chosen:
        probabilities = entry.probabilities.float()
        if settings.layers:
            mean_map = token_map(probabilities.mean(dim=1), entry.prefix_tokens, entry.map_size)
            yield short_name(entry.name), to_image(mean_map, size), None
        if settings.heads:
            per_head = token_map(probabilities, entry.prefix_tokens, entry.map_size)  # (B, heads, rows, cols)
            for head in range(per_head.shape[1]):
                yield f"{short_name(entry.name)} h{head}", to_image(per_head[:, head], size), None


def _query_panels(
    entry: AttentionRecord, size: tuple[int, int], queries: torch.Tensor, settings: ExplainSettings
) -> Iterator[TitledMaps]:
    """A map block's distribution for each image's query pixel (mean over heads; with ``heads`` each head)."""
    positions = torch.tensor([map_position((int(row), int(col)), size, entry.map_size) for row, col in queries])
    maps = query_map(entry, positions).float()  # (B, heads, h, w)
    yield f"{short_name(entry.name)} (query +)", to_image(maps.mean(dim=1), size), queries
    if settings.heads and maps.shape[1] > 1:
        for head in range(maps.shape[1]):
            yield f"{short_name(entry.name)} h{head}", to_image(maps[:, head], size), queries


def short_name(name: str) -> str:
    """A block's module path without the wrappers' prefixes (``network.``, ``grafts.``)."""
    for prefix in ("network.", "grafts."):
        name = name.removeprefix(prefix)
    return name


def write_explanations(
    network: nn.Module,
    samples: Sequence[Sample],
    out: Path,
    *,
    settings: ExplainSettings,
    classes: Sequence[str],
    statistics: tuple[Sequence[float], Sequence[float]],
    per_class: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Explains ``samples`` and writes the figures into ``out``: one per image, or one grid per class.

    Also writes ``explanations.json`` (each image's label, prediction, probability, query pixel and figure).

    Returns:
        The figures written.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file is there; the figures need a directory")
    if samples:
        check_query(settings, samples[0].image.shape[-2:])
        settings = with_black_baseline(settings, statistics, samples[0].image.shape[0])
    results: list[tuple[Sample, Explanation]] = []
    batches = [samples[start : start + BATCH_SIZE] for start in range(0, len(samples), BATCH_SIZE)]
    for batch in tqdm(batches, desc="explain", unit="batch", disable=not progress or len(batches) < 2):
        images = torch.stack([sample.image for sample in batch])
        results += zip(batch, explain_images(network, images, settings), strict=True)
    rows = {sample.name: _row(sample, explanation, classes, statistics) for sample, explanation in results}
    figures: dict[str, Path] = {}
    if per_class:
        for label in sorted({sample.label for sample, _ in results if sample.label is not None}):
            path = out / f"class_{label:02d}_{_file_word(_class_name(classes, label))}.png"
            members = [sample.name for sample, _ in results if sample.label == label]
            draw_rows([rows[name] for name in members], path, title=f"class {_class_name(classes, label)}")
            figures |= dict.fromkeys(members, path)
    else:
        for sample, _ in results:
            figures[sample.name] = out / f"{sample.name}.png"
            draw_rows([rows[sample.name]], figures[sample.name])
    write_json(
        out / "explanations.json", [_entry(sample, explanation, classes, figures) for sample, explanation in results]
    )
    return list(dict.fromkeys(figures.values()))


def with_black_baseline(
    settings: ExplainSettings, statistics: tuple[Sequence[float], Sequence[float]], channels: int
) -> ExplainSettings:
    """``settings`` with the black image as attribution baseline (unless one is set).

    A pixel of value 0 before normalisation is ``-mean / std`` after it: with the black image as the starting point
    a black background gets no Integrated Gradients attribution and occluding it changes nothing.
    """
    if settings.attribution.baseline:
        return settings
    means, stds = list(statistics[0]), list(statistics[1])
    if len(means) != channels:  # grey statistics for images replicated to RGB
        means, stds = means[:1] * channels, stds[:1] * channels
    black = tuple(-mean / std for mean, std in zip(means, stds, strict=True))
    return replace(settings, attribution=replace(settings.attribution, baseline=black))


def _row(
    sample: Sample,
    explanation: Explanation,
    classes: Sequence[str],
    statistics: tuple[Sequence[float], Sequence[float]],
) -> Row:
    predicted = _class_name(classes, explanation.prediction)
    truth = "" if sample.label is None else f"true {_class_name(classes, sample.label)}\n"
    title = f"{truth}pred {predicted} ({100 * explanation.probability:.0f}%)"
    return Row(title, displayable(sample.image, *statistics), explanation.panels)


def _entry(
    sample: Sample, explanation: Explanation, classes: Sequence[str], figures: dict[str, Path]
) -> dict[str, Any]:
    return {
        "image": sample.name,
        "label": sample.label,
        "label_name": None if sample.label is None else _class_name(classes, sample.label),
        "prediction": explanation.prediction,
        "prediction_name": _class_name(classes, explanation.prediction),
        "probability": explanation.probability,
        "query": explanation.query,
        "panels": [panel.title for panel in explanation.panels],
        "figure": figures[sample.name].name,
    }


def _class_name(classes: Sequence[str], label: int) -> str:
    return classes[label] if 0 <= label < len(classes) else str(label)


def _file_word(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "class"


def explain_checkpoint(
    checkpoint: str | Path,
    out: Path,
    *,
    settings: ExplainSettings,
    config: str | Path | None = None,
    data_dir: str | None = None,
    images: int = 8,
    paths: Sequence[str | Path] = (),
    per_class: int = 0,
    progress: bool = True,
) -> list[Path]:
    """``attngraft explain``: the network of ``checkpoint`` explained on test images or image files.

    Args:
        checkpoint: A checkpoint of ``attngraft fit``.
        out: Directory of the figures.
        settings: Methods and maps.
        config: The run's config (its ``data`` section); default: ``config.yaml`` of the checkpoint's run.
        data_dir: Directory searched first for the dataset's files.
        images: The first this many test images (when neither ``paths`` nor ``per_class`` is given).
        paths: Image files to explain instead.
        per_class: Explain the first this many test images of every class, one grid per class.
        progress: Show a progress bar for many images.

    Returns:
        The figures written.
    """
    network, arguments = load_checkpoint(checkpoint)
    data = data_settings(config, checkpoint) | ({"data_dir": data_dir} if data_dir else {})
    datamodule = ImageDataModule(**data, num_workers=0, cache_images=False)
    _check_fit(arguments, datamodule, checkpoint, config)
    return explain_network(
        network, datamodule, out, settings=settings, images=images, paths=paths, per_class=per_class, progress=progress
    )


def explain_network(
    network: nn.Module,
    datamodule: ImageDataModule,
    out: str | Path,
    *,
    settings: ExplainSettings | None = None,
    images: int = 8,
    paths: Sequence[str | Path] = (),
    per_class: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Explains a network (any module that classifies the data module's images) into figures in ``out``.

    Args:
        network: The trained network.
        datamodule: Its data: the test images, class names and normalisation come from here.
        out: Directory of the figures and ``explanations.json``.
        settings: Methods and maps; default: every method and the attention maps.
        images: The first this many test images (when neither ``paths`` nor ``per_class`` is given).
        paths: Image files to explain instead.
        per_class: Explain the first this many test images of every class, one grid per class.
        progress: Show a progress bar for many images.

    Returns:
        The figures written.
    """
    if paths:
        samples = file_samples(paths, datamodule)
        classes = _classes_if_found(datamodule)
    else:
        samples = official_test_samples(datamodule, images, per_class)
        classes = datamodule.classes
    return write_explanations(
        network,
        samples,
        Path(out),
        settings=settings or ExplainSettings(),
        classes=classes,
        statistics=display_statistics(datamodule),
        per_class=bool(per_class) and not paths,
        progress=progress,
    )


def _check_fit(
    arguments: dict[str, Any], datamodule: ImageDataModule, checkpoint: str | Path, config: str | Path | None
) -> None:
    """Raises :class:`ConfigError` when the data's channels or classes differ from what the network was built for."""
    expected = (arguments.get("in_chans"), arguments.get("num_classes"))
    if datamodule.spec.num_classes is None:  # image folders know their classes once read
        return
    found = (datamodule.num_channels, datamodule.num_classes)
    if expected != found:
        source = config or "its run's config.yaml (or the defaults: fashion-mnist)"
        raise ConfigError(
            f"checkpoint {checkpoint} was trained on {expected[0]}-channel images of {expected[1]} classes, but the "
            f"data of {source} ({datamodule.spec.name}) gives {found[0]} channels and {found[1]} classes: "
            "pass the run's --config"
        )


def display_statistics(datamodule: ImageDataModule) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) that undo the data module's normalisation ((0,), (1,) when it does not normalise)."""
    return datamodule.statistics


def _classes_if_found(datamodule: ImageDataModule) -> list[str]:
    """The dataset's class names when its files are here; else none (figures then show class numbers)."""
    try:
        datamodule.setup("test")
    except DataNotFoundError:
        return []
    return list(datamodule.classes)
