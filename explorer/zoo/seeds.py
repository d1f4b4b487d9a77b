"""zoo-s retrained with other training seeds: the evaluation-variance lesson's replicas.

Same architecture, data mix, schedule and step count as `zoo-s`; only
`Spec.seed` differs, which changes both the initial weights
(`torch.manual_seed(seed)` in `recipe.build_model`) and the order of the
batches (`recipe.batch` draws from `random.Random(f"train:{seed}:{step}")`).

They ship under `explorer/zoo/weights/zoo-s-seed<k>/` but are deliberately NOT
members of `zoo.FAMILY`, so `zoo.names()` keeps its four sizes and nothing that
iterates over the family changes. Load one with `ex.load(seeds.path(1))` (a
local folder, like any Hugging Face checkpoint).

Train one (about 2-3 minutes on one core)::

    python -m explorer.zoo.seeds 1        # writes weights/zoo-s-seed1
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from explorer import zoo

BASE = "zoo-s"
SEEDS = (1, 2)  # the shipped replicas; the family's own zoo-s is seed 0


def name(seed: int) -> str:
    return f"{BASE}-seed{seed}"


def spec(seed: int) -> zoo.Spec:
    """zoo-s's spec with another training seed."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}; must be a non-negative int (0 is the family's own zoo-s)")
    return dataclasses.replace(zoo.spec(BASE), name=name(seed), seed=seed)


def path(seed: int) -> Path:
    """The folder of a shipped replica (seed 0 is zoo-s itself); raises if it was never trained."""
    if seed == zoo.spec(BASE).seed:
        return zoo.path(BASE)
    folder = zoo.weights_root() / name(seed)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no zoo-s replica for seed {seed} at {folder}; shipped seeds: {SEEDS}; "
            f"train it with `python -m explorer.zoo.seeds {seed}`"
        )
    return folder


def available() -> list[int]:
    """Training seeds of zoo-s whose weights are on disk, the family's own first."""
    out = [zoo.spec(BASE).seed]
    out += [s for s in SEEDS if (zoo.weights_root() / name(s) / "config.json").exists()]
    return out


def train(seed: int, out: Path | None = None, **kw) -> dict:
    from explorer.zoo import recipe

    s = spec(seed)
    # The resumable checkpoint goes to the temp folder, never beside the shipped weights.
    kw.setdefault("work_dir", Path(tempfile.gettempdir()) / f"explorer-{s.name}-work")
    return recipe.train(s, Path(out) if out else zoo.weights_root() / s.name, **kw)


if __name__ == "__main__":
    for arg in sys.argv[1:] or [str(s) for s in SEEDS]:
        print(train(int(arg))["train_seconds"], "s")
