"""Model architectures (one file each), their configs and a registry by name."""
from fiqa_compile.models.registry import create_model, get_config, list_models, register_model

__all__ = ["create_model", "get_config", "list_models", "register_model"]
