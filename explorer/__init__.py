"""Trade-off Explorer: the headless engine (no Jupyter import anywhere in it)."""
from __future__ import annotations

__version__ = "0.1.0"

from explorer import tasks, zoo
from explorer.models import Model, ModelNotFound, load
from explorer.runs import run
from explorer.techniques import Baseline, Technique

__all__ = ["Baseline", "Model", "ModelNotFound", "Technique", "load", "run", "tasks", "zoo"]
