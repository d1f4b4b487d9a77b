"""Train the whole family: the largest model on one core, the rest in turn on the other.

Each model trains in its own process with one thread: at these sizes two
single-threaded runs side by side beat one run with two threads
(shared/ZOO-NOTES.md). Then every model is evaluated and gets its model card.
"""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from explorer import zoo


def _train_group(names: list[str], out: str, text: str | None, steps: int | None) -> list[dict]:
    from explorer.zoo import recipe

    return [recipe.train(zoo.spec(n), Path(out) / n, text_dir=text, steps=steps) for n in names]


def plan(names: list[str], jobs: int) -> list[list[str]]:
    """Split models into `jobs` groups of about equal work, largest first."""
    order = sorted(names, key=lambda n: -work(zoo.spec(n)))
    groups: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(order))))]
    loads = [0.0] * len(groups)
    for n in order:
        i = loads.index(min(loads))
        groups[i].append(n)
        loads[i] += work(zoo.spec(n))
    return groups


def work(spec: zoo.Spec) -> float:
    return spec.steps * spec.layers * spec.width**2


def main(names: list[str] | None = None, *, out: str | None = None, text: str | None = None,
         jobs: int = 2, steps: int | None = None) -> list[dict]:
    from explorer.zoo import card

    names = names or zoo.names()
    for n in names:
        zoo.spec(n)  # unknown names fail before any training starts
    if jobs < 1:
        raise ValueError(f"jobs={jobs!r}; must be at least 1")
    out_dir = Path(out) if out else zoo.weights_root()
    groups = plan(names, jobs)
    if len(groups) == 1:
        facts = _train_group(groups[0], str(out_dir), text, steps)
    else:
        with mp.get_context("spawn").Pool(len(groups)) as pool:
            parts = pool.starmap(_train_group, [(g, str(out_dir), text, steps) for g in groups])
        facts = [f for part in parts for f in part]
    decode = card.decode_family([out_dir / f["name"] for f in facts])
    for f in facts:
        card.write(out_dir / f["name"], decode[f["name"]])
    return facts
