"""Model registry: ``create_model(name, ...)``; one file per family."""

from . import mobilenet_v1, mobilenet_v2, resnet, wideresnet  # noqa: F401  (registers)
from .registry import ModelInfo, create_model, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]
