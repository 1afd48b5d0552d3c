"""Normalisation statistics shared by the dataset registry and the transforms (torch-free)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
