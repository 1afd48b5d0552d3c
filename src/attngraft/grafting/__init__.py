"""Grafting: add attention to an existing CNN — as a head, between stages, or in place of 3×3 convolutions.

``build(spec)`` makes a backbone (torchvision, timm or attngraft), loads its weights, applies the grafts and
freezes; ``graft(model, Head(...), Insert(...), freeze=...)`` does the same to a module you already have. Grafts
are ``Head``/``Insert``/``Replace`` values or their dict (YAML) forms.
"""

from attngraft.grafting.backbone import Stage, create_backbone, list_stages, tracer_options
from attngraft.grafting.grafts import Graft, Head, Insert, Replace, as_graft
from attngraft.grafting.head import SingleTokenWarning
from attngraft.grafting.model import GraftedModel, GraftRecord
from attngraft.grafting.spec import build, check_spec, graft, load_spec
from attngraft.grafting.summary import GraftSummary, summarize
from attngraft.grafting.weights import read_state_dict, save_weights

__all__ = [
    "Graft",
    "GraftRecord",
    "GraftSummary",
    "GraftedModel",
    "Head",
    "Insert",
    "Replace",
    "SingleTokenWarning",
    "Stage",
    "as_graft",
    "build",
    "check_spec",
    "create_backbone",
    "graft",
    "list_stages",
    "load_spec",
    "read_state_dict",
    "save_weights",
    "summarize",
    "tracer_options",
]
