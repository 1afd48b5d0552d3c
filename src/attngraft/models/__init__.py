"""The model zoo: ResNets (conv and SASA), ViT, DeepViT, DeiT, pixel and hybrid ViTs, Swin, the MNIST CNN.

Importing this package registers every model; see :func:`create_model` and :func:`list_models`.
"""

from attngraft.models import cnn, resnet, swin, vit
from attngraft.models.convert import convert, load_foreign_weights
from attngraft.models.cost import count_parameters, count_used_parameters, flops
from attngraft.models.factory import MODELS, ModelSpec, create_model, list_models, register_model

__all__ = [
    "MODELS",
    "ModelSpec",
    "cnn",
    "convert",
    "count_parameters",
    "count_used_parameters",
    "create_model",
    "flops",
    "list_models",
    "load_foreign_weights",
    "register_model",
    "resnet",
    "swin",
    "vit",
]
