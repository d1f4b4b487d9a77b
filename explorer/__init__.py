"""Trade-off Explorer: the headless engine (no Jupyter import anywhere in it)."""
from __future__ import annotations

from explorer.version import __version__  # noqa: F401

from explorer import stats, tasks, zoo
from explorer.models import Model, ModelNotFound, load
from explorer.runs import run
from explorer.compose import compose
from explorer.frontier import best_under_budget, frontier
from explorer.store import Store
from explorer.sweep import grid, sweep
# Importing the package registers every built-in technique (explorer/techniques/__init__.py).
from explorer.techniques import Baseline, Knob, Technique, technique, techniques as _techniques
from explorer.techniques.quantize import Quantize
from explorer.techniques.early_exit import EarlyExit
from explorer.techniques.self_speculative import SelfSpeculative
from explorer.aggregate import pass_at_k
from explorer.techniques.sampling import Sampling
from explorer.speculative import speculative_generate
from explorer.techniques.speculative import Speculative

__all__ = ["Store", "best_under_budget", "compose", "frontier", "grid", "sweep", "Baseline", "Quantize", "EarlyExit", "SelfSpeculative", "Sampling", "Speculative", "speculative_generate", "pass_at_k", "Model", "ModelNotFound", "Technique", "Knob", "technique", "load", "run", "tasks", "zoo"]

# Every built-in technique as `ex.<ClassName>`, including those added after this file was written.
for _name, _cls in _techniques.items():
    if _cls.__module__.startswith("explorer.techniques.") and _cls.__name__ not in globals():
        globals()[_cls.__name__] = _cls
        __all__.append(_cls.__name__)
del _name, _cls
