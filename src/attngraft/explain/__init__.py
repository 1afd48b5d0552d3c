"""Interpretability: Captum attributions and attention maps (rollout, query-pixel maps), drawn over the images.

Example:
    >>> from attngraft.explain import ExplainSettings, explain_images  # doctest: +SKIP
    >>> explanations = explain_images(network, images, ExplainSettings(methods=["ig", "attention"]))  # doctest: +SKIP
"""

from __future__ import annotations

from attngraft.explain.attention import AttentionRecord, query_map, record, rollout, token_map
from attngraft.explain.attribution import METHODS, AttributionSettings, ClassLogits, attribute, default_gradcam_layer
from attngraft.explain.explainer import (
    DEFAULT_METHODS,
    ExplainSettings,
    Explanation,
    explain_checkpoint,
    explain_images,
    explain_network,
    write_explanations,
)
from attngraft.explain.figures import Panel, Row, draw_rows
from attngraft.explain.inputs import Sample, load_network

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "AttentionRecord",
    "AttributionSettings",
    "ClassLogits",
    "ExplainSettings",
    "Explanation",
    "Panel",
    "Row",
    "Sample",
    "attribute",
    "default_gradcam_layer",
    "draw_rows",
    "explain_checkpoint",
    "explain_images",
    "explain_network",
    "load_network",
    "query_map",
    "record",
    "rollout",
    "token_map",
    "write_explanations",
]
