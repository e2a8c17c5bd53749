"""Model registry: named presets plus any Hugging Face image-classification id or local directory."""

from benchmark.models.registry import (
    BuiltModel,
    ModelSpec,
    build_model,
    list_models,
    missing_model,
    register_model,
    resolve_model,
)

__all__ = ["BuiltModel", "ModelSpec", "build_model", "list_models", "missing_model", "register_model", "resolve_model"]
