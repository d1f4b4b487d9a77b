"""Errors the engine raises for a user's input, in a module of their own so that any module can
raise them without importing the one that loads models (explorer.models imports explorer.gguf_models,
which raises ModelNotFound too)."""
from __future__ import annotations


class ModelNotFound(ValueError):
    """A model name that is neither a zoo name, a local folder, nor a reachable Hub id."""
