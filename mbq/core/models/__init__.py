"""Model registry: ``create_model(name, num_classes, in_channels, image_size, **opts)``.

Every model is built from plain nn.Conv2d / nn.Linear / nn.BatchNorm2d
modules so the quantizer can swap them; the first Conv2d (registration
order) is the stem and the last Linear the classifier head.
"""
from . import cnn, preact_resnet, resnet_cifar, tv_mobilenet, tv_resnet, vit  # noqa: F401  (registers)
from ._registry import create_model, list_models, model_kwargs, model_traits, register_model
from .init_weights import load_init_weights, read_state_dict_file

__all__ = ["create_model", "list_models", "model_kwargs", "model_traits", "register_model",
           "load_init_weights", "read_state_dict_file"]
