"""The embedded model family: small Llama models trained by `explorer zoo train`.

Shipped in Hugging Face format (config.json, model.safetensors, tokenizer files,
README.md model card) under `explorer/zoo/weights/<name>/`, and loaded through
`from_pretrained` exactly as a Hub model is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Spec:
    """One member of the family and its training budget."""

    name: str
    layers: int
    width: int
    heads: int
    steps: int
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 200
    seed: int = 0

    @property
    def intermediate(self) -> int:
        # Llama's SwiGLU ratio (8/3 of the width), rounded up to a multiple of 16.
        return -(-8 * self.width // 3 // 16) * 16


# Smallest first. Depth sets per-token decode time at these sizes (fixed cost per
# layer, shared/ZOO-NOTES.md), so the family spreads in depth as well as width.
FAMILY: tuple[Spec, ...] = (
    Spec("zoo-xs", layers=1, width=64, heads=2, steps=900, warmup=100),
    Spec("zoo-s", layers=2, width=96, heads=3, steps=2500),
    Spec("zoo-m", layers=4, width=160, heads=5, steps=2000),
    Spec("zoo-l", layers=8, width=192, heads=6, steps=5000),
)


def names() -> list[str]:
    """The family's names, smallest first."""
    return [s.name for s in FAMILY]


def spec(name: str) -> Spec:
    for s in FAMILY:
        if s.name == name:
            return s
    raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(names())}")


def weights_root() -> Path:
    return Path(str(resources.files("explorer.zoo"))) / "weights"


def path(name: str) -> Path:
    """The folder holding a shipped model; raises if it was never trained."""
    folder = weights_root() / spec(name).name
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"zoo model {name!r} has no weights at {folder}; run `explorer zoo train` to create them"
        )
    return folder


# Drafts for the real model SmolLM2-135M (explorer/zoo/distill.py): same tokenizer as their target,
# shipped beside the family, loaded by name. `explorer zoo train smollm2-drafts` re-creates them.
DRAFTS: tuple[str, ...] = ("smollm2-draft-distilled", "smollm2-draft-text")


def draft_path(name: str) -> Path:
    if name not in DRAFTS:
        raise KeyError(f"unknown draft {name!r}; known: {', '.join(DRAFTS)}")
    folder = weights_root() / name
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"draft {name!r} has no weights at {folder}; run `explorer zoo train smollm2-drafts`")
    return folder

def family_facts() -> list[dict]:
    """One record per zoo model from its folder's eval.json and training.json (no model is loaded)."""
    out = []
    for name in names():
        folder = weights_root() / name
        shape = spec(name)
        e = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").exists() else {}
        t = json.loads((folder / "training.json").read_text()) if (folder / "training.json").exists() else {}
        out.append({"name": name, "layers": shape.layers, "width": shape.width, "params": e.get("params"),
                    "weight_bytes": e.get("weight_bytes"), "train_steps": t.get("steps"),
                    "train_min": round(t["train_seconds"] / 60, 1) if t else None,
                    "mixed_accuracy": e.get("summary", {}).get("mixed"),
                    "bits_per_char": e.get("bits_per_char"),
                    "decode_ms_per_token": e.get("decode_ms_per_token")})
    return out
