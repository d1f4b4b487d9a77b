"""Self-speculative decoding (LayerSkip, Elhoushi et al. 2024): the model drafts for itself.

The draft is the target's own first `exit_layer` layers, read through the
shared final norm and LM head (the zoo was trained to predict there), so no
second model is loaded and no weight is copied: `explorer.layerwise.first_layers`
is a view sharing every tensor. The full model verifies, so greedy output is
exactly the full model's.

Everything else is `Speculative`'s: the one speculative loop
(`explorer.speculative.speculative_generate`), its statistics, its evaluation
(speed-up against the target alone, predicted speed-up from the measured
acceptance and cost ratio) and its analytic FLOPs. What we leave out of
LayerSkip: its draft and verify share the first layers' KV cache and the
verifier resumes from the draft's exit state; here the draft keeps a cache of its
own and verification recomputes the first `exit_layer` layers, so the cost
ratio measured in the row is the honest one for this simpler scheme.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import ClassVar

from explorer.layerwise import first_layers
from explorer.techniques.base import DECODES, EVALUATES, Knob, technique
from explorer.techniques.speculative import Speculative
from explorer.models import facts_of, Model

# One view per (model, exit layer): building it costs milliseconds, but the
# technique asks for its draft on every batch.
_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@technique(
    "self_speculative", roles=[DECODES, EVALUATES], axis="wall_s_per_token", view="widgets.tokens:SpecStreamView",
    knobs=[Knob("exit_layer", "draft layers", 1, range=(1, 7), step=1, unit="layers"),
           Knob("draft_len", "draft length", 4, range=(1, 8), step=1, unit="tokens")],
)
@dataclasses.dataclass(frozen=True)
class SelfSpeculative(Speculative):
    """Draft `draft_len` tokens with the first `exit_layer` layers; verify with all of them.

    exit_layer  1..depth-1 (checked against the model when run)
    draft_len, adaptive, temperature  as in `Speculative`
    """

    name: ClassVar[str] = "self_speculative"
    draft: str = dataclasses.field(default="self", init=False)  # the row says where the draft came from
    exit_layer: int = 1

    def __post_init__(self):
        super().__post_init__()
        k = self.exit_layer
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"SelfSpeculative.exit_layer={k!r}; valid: an integer from 1 to the model's depth - 1")

    def models(self) -> list[str]:
        return []  # the draft is the target's own layers: the target's fingerprint covers it

    def draft_model(self, target=None):
        """The target's first `exit_layer` layers as an explorer Model (sharing the target's weights)."""
        if target is None:
            raise ValueError("SelfSpeculative drafts with the target's own layers; call draft_model(target)")
        views = _VIEWS.setdefault(target.hf, {})
        if self.exit_layer not in views:
            try:
                views[self.exit_layer] = first_layers(target.hf, self.exit_layer)
            except ValueError as err:
                raise ValueError(f"SelfSpeculative.{err}") from None
        view = views[self.exit_layer]
        facts = facts_of(view, f"{target.name}[:{self.exit_layer}]", target.facts.source, target.facts.revision)
        return Model(view, target.tokenizer, facts, {"self_speculative_of": target.name})

    def prepare(self, model):
        """The target itself: the draft shares its weights, so no bytes are added."""
        self.draft_model(model)  # refuse an exit layer the model does not have, before decoding
        return Model(model.hf, model.tokenizer, model.facts, {**model.tags, "self_speculative_exit_layer":
                                                              self.exit_layer})
