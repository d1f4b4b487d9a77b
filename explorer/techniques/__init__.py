"""Techniques: one module each, one shared interface (explorer/techniques/base.py).

Each module declares its technique with `@technique(...)`: config, roles, knobs,
default cost axis, detail view. Importing this package registers every built-in
technique; a technique of one's own registers the same way, from any file:

    from explorer.techniques import technique, Knob, Technique, DECODES
"""
from __future__ import annotations

from explorer.techniques.base import (AGGREGATES, CHANGES_WEIGHTS, DECODES, EVALUATES, ROLES, Baseline,
                                      Declaration, Knob, Technique, declaration, declarations, roles_of,
                                      technique, techniques)

# The built-in techniques, registered by importing them (one line each).
from explorer.techniques import quantize  # noqa: E402,F401
from explorer.techniques import early_exit  # noqa: E402,F401
from explorer.techniques import sampling  # noqa: E402,F401
from explorer.techniques import speculative  # noqa: E402,F401
from explorer.techniques import self_speculative  # noqa: E402,F401
from explorer.techniques import prune  # noqa: E402,F401

__all__ = ["AGGREGATES", "CHANGES_WEIGHTS", "DECODES", "EVALUATES", "ROLES", "Baseline", "Declaration", "Knob",
           "Technique", "declaration", "declarations", "roles_of", "technique", "techniques"]
