"""Sweeps: grids of runs that fill the results store, resumable, local or on Ray.

`sweep` keys every configuration before running anything (model name and
weights fingerprint, task, technique knobs, n, seed), asks the store which keys
it already has, and runs only the rest. Each finished row is stored at once by
an atomic rename, so a sweep killed at any point (even SIGKILL) and started
again computes exactly the rows that are missing.
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl

from explorer import tasks as T
from explorer.executors import Failed, Job
from explorer.executors import get as get_executor
from explorer.store import KEY, Store
from explorer.techniques import Baseline, Technique, declarations, techniques as registry
from explorer.compose import compose, decodes
from explorer.fingerprint import identity
from explorer.generate import check_seed
from explorer.models import resolve, task_format_of
from explorer.runs import MAX_BATCH_SIZE, MAX_REPEATS, check_positive, config_hash


class Grid(list):
    """The techniques of one `grid(...)` call; inside a `techniques=` list it is spliced in,
    whereas a plain list or tuple there is one composed configuration."""


def grid(technique: type[Technique], **knobs: Any) -> Grid:
    """Every combination of the knob values given as lists: `grid(Quantize, bits=[4, 8], group_size=32)`.

    A knob given as a single value is held fixed; each combination is built (and
    so validated) by the technique's own constructor.
    """
    if not (isinstance(technique, type) and issubclass(technique, Technique)):
        raise ValueError(f"grid: technique={technique!r}; give a technique class such as explorer.Baseline")
    fields = [f.name for f in dataclasses.fields(technique)] if dataclasses.is_dataclass(technique) else []
    unknown = sorted(set(knobs) - set(fields))
    if unknown:
        raise ValueError(f"grid: {technique.__name__} has no knob {', '.join(map(repr, unknown))}; "
                         f"its knobs: {', '.join(fields) or 'none'}")
    axes = {k: list(v) if isinstance(v, (list, tuple, range)) else [v] for k, v in knobs.items()}
    for k, values in axes.items():
        if not values:
            raise ValueError(f"grid: {technique.__name__}.{k}=[] ; give at least one value")
    return Grid(technique(**dict(zip(axes, combo))) for combo in itertools.product(*axes.values()))


def flatten_techniques(techniques: Technique | Iterable | None) -> list[Technique]:
    """Techniques for a sweep: a technique, grids (spliced) and lists (composed), in order, without repeats."""
    if techniques is None:
        return [Baseline()]
    items = [techniques] if isinstance(techniques, Technique) else list(techniques)
    out: list[Technique] = []
    for item in items:
        if isinstance(item, Grid):
            out.extend(item)
        elif isinstance(item, (list, tuple)):
            out.append(compose(*item))
        elif isinstance(item, Technique):
            out.append(item)
        else:
            raise ValueError(f"techniques: {item!r} is not a technique; give explorer.Baseline(), "
                             "explorer.grid(...), or a list of techniques to compose")
    if not out:
        raise ValueError("techniques=[]; give at least one technique (explorer.Baseline() runs the model as is)")
    return list(dict.fromkeys(out))


def model_identity(name: str) -> tuple[str, str]:
    """(name, weights fingerprint) exactly as `explorer.load(name).facts` would report, without loading weights."""
    return identity(name)


def planned(model: str, task: T.Task) -> T.Task:
    """`task` in the format `run` will bind it to for `model`, known before loading it (it is in the row's key)."""
    if task.kind != "generate" or task.format is not None:
        return task
    return task.with_format(T.pick_format(task, task_format_of(model)))


def applies(technique: Technique, task: T.Task) -> bool:
    """A likelihood task only scores the prepared model, so a technique that decodes or
    evaluates (EarlyExit, Sampling) would give a duplicate of a row without it: skip it there."""

    return task.kind != "likelihood" or not decodes(technique)


def plan(models: Sequence[str] | str, tasks: Sequence[str] | str, techniques=None, *, n: int = 200,
         seed: int = 0, repeats: int = 1, batch_size: int = 64) -> list[Job]:
    """Every job of a sweep, keyed, in run order (grouped by model so each is loaded once)."""

    if not isinstance(models, (str, list, tuple)):
        raise ValueError(f"models={models!r}; give a model name or a list of them (zoo names, folders, Hugging Face ids)")
    if not isinstance(tasks, (str, T.Task, list, tuple)):
        raise ValueError(f"tasks={tasks!r}; give a task name or a list of them; valid: {', '.join(T.names())}")
    models = [models] if isinstance(models, str) else list(models)
    tasks = [tasks] if isinstance(tasks, (str, T.Task)) else list(tasks)
    if not models or not tasks:
        raise ValueError(f"sweep needs at least one model and one task; got models={models!r}, tasks={tasks!r}")

    n = T.check_n(n)
    seed = check_seed(seed)
    check_positive(repeats, "repeats", "a positive integer (timed repetitions)", MAX_REPEATS)
    check_positive(batch_size, "batch_size", "a positive integer (prompts per forward call)", MAX_BATCH_SIZE)
    for m in models:
        if not isinstance(m, str):
            raise ValueError(f"models: {m!r} is not a model name; give zoo names, folders or Hugging Face ids")
    for t in tasks:
        if not isinstance(t, (str, T.Task)):
            raise ValueError(f"tasks: {t!r} is not a task name; valid: {', '.join(T.names())}")
    task_objs = [T.get(t.name if isinstance(t, T.Task) else t) for t in tasks]
    techs = flatten_techniques(techniques)
    jobs = []
    for model in dict.fromkeys(models):
        ident = model_identity(model)
        for task, tech in itertools.product(task_objs, techs):
            if applies(tech, task):
                jobs.append(Job(model, task.name, tech, n, seed, config_hash(ident, planned(model, task), tech, n, seed, batch_size),
                                repeats, batch_size))
    return list({j.config_hash: j for j in jobs}.values())


def sweep(models: Sequence[str] | str, tasks: Sequence[str] | str, techniques=None, *,
          store: Store | str | None = None, executor: str = "local", address: str | None = None,
          workers: int | None = None, n: int = 200, seed: int = 0, repeats: int = 1, batch_size: int = 64,
          progress: bool = True, remeasure: bool = False) -> pl.DataFrame:
    """Run every configuration of models x tasks x techniques that `store` lacks; return all their rows.

    `executor="local"` runs here; `executor="ray"` runs on Ray workers (`address=`
    an existing cluster, or None for a local one with `workers` processes).
    Same seed, same rows, whichever executor ran them.

    A stored row is reused when its key matches (same weights of every model, task, knobs,
    n, seed, engine). Its timing columns come from the measurement that made it: a row
    measured with another `batch_size` or `repeats` than asked is reported (a warning naming
    how many and with what), and run again with `remeasure=True`. A sweep whose every
    configuration is refused raises ValueError.
    """
    from tqdm.auto import tqdm

    if not isinstance(remeasure, bool):
        raise ValueError(f"remeasure={remeasure!r}; give True or False")
    store = store if isinstance(store, Store) else Store(store)
    jobs = plan(models, tasks, techniques, n=n, seed=seed, repeats=repeats, batch_size=batch_size)
    run_with = get_executor(executor, address=address, workers=workers)
    have = store.hashes()
    other = measured_otherwise(store, [j for j in jobs if j.config_hash in have], repeats, batch_size)
    if other and remeasure:
        have -= set(other)
    elif other:
        seen = ", ".join(sorted(set(other.values())))
        warnings.warn(f"sweep: {len(other)} stored row(s) of this sweep were measured with {seen}, not "
                      f"batch_size={batch_size}, repeats={repeats}: their results are this configuration's, "
                      "but their measured and batch-dependent columns (wall_s, speed-ups, bytes moved per token) come from that measurement. Pass "
                      "remeasure=True (explorer sweep --remeasure) to time them again", stacklevel=2)
    if store.read_only():
        todo_count = sum(j.config_hash not in have for j in jobs)
        if todo_count:
            raise PermissionError(f"results store {str(store.path)!r} is not writable, and {todo_count} "
                                  "configuration(s) would run and be lost; give a writable folder with "
                                  "store= (or --store, or $EXPLORER_STORE)")
    todo = [j for j in jobs if j.config_hash not in have]
    if executor != "local":  # longest first balances the workers; local keeps model order (one load each)
        todo.sort(key=lambda j: -weight_size(j.model))
    # What was already stored goes in the bar itself, not in a line of its own on stderr: a notebook
    # paints stderr red, and a learner reads a red line as an error.
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="run", disable=not progress,
               desc=f"sweep ({executor}; {len(jobs) - len(todo)} of {len(jobs)} stored already)", file=sys.stderr)
    failed: list[Failed] = []
    try:
        for row in run_with.map(todo):
            if isinstance(row, Failed):
                failed.append(row)
            else:
                store.add(row)
                bar.set_postfix_str(f"{row['model']} {row['task']} {row['technique']}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    if failed:
        groups: dict[tuple, list[str]] = {}
        for f in failed:
            groups.setdefault((f.job.model, repr(f.job.technique), f.error), []).append(f.job.task)
        lines = "\n".join(f"  {m} {t} on {', '.join(ts)}: {e}" for (m, t, e), ts in groups.items())
        message = f"sweep: {len(failed)} of {len(jobs)} configurations were refused and not stored:\n{lines}"
        if len(failed) == len(jobs):
            raise ValueError(message.replace("sweep: ", "sweep: all ", 1))
        warnings.warn(message, stacklevel=2)
    wanted = {j.config_hash for j in jobs}
    return store.frame().filter(pl.col(KEY).is_in(list(wanted)))


def measured_otherwise(store: Store, jobs: Sequence[Job], repeats: int, batch_size: int) -> dict[str, str]:
    """config_hash -> "batch_size=b, repeats=r" for stored rows of `jobs` measured otherwise."""
    if not jobs:
        return {}
    df = store.frame().filter(pl.col(KEY).is_in([j.config_hash for j in jobs]))
    out = {}
    for row in df.select([c for c in (KEY, "batch_size", "repeats") if c in df.columns]).to_dicts():
        b, r = row.get("batch_size"), row.get("repeats")
        if b != batch_size or r != repeats:
            out[row[KEY]] = f"batch_size={b if b is not None else 'unknown'}, repeats={r if r is not None else 'unknown'}"
    return out


def weight_size(model: str) -> int:
    file = Path(resolve(model)[0]) / "model.safetensors"
    return file.stat().st_size if file.exists() else 0


# -- sweep files (TOML or YAML) -------------------------------------------------

SPEC_KEYS = ("models", "tasks", "techniques", "n", "seed", "repeats", "batch_size")

# The default sweep over the embedded family: every model and task, the baseline, the
# small grid each registered technique declares (`@technique(..., sweep=[...])`) and the
# compositions below, sized to finish in minutes on a two-core laptop.
# Techniques not registered in this install are left out.
DEFAULT_SPEC: dict[str, Any] = {
    "models": "zoo",  # every zoo model with weights
    "tasks": "all",
    "n": 64,
    "seed": 0,
    "repeats": 1,
    "techniques": [
        {"name": "baseline"},
        *[{"name": d.name, **g} for d in declarations() for g in d.sweep],
        # The joint space no single paper draws: a 4-bit model sampled, a 4-bit model exiting early.
        {"compose": [{"name": "quantize", "bits": [4]}, {"name": "sampling", "n": [4]}]},
        {"compose": [{"name": "quantize", "bits": [4]}, {"name": "early_exit", "threshold": [0.9]}]},
        # Majority vote over early-exit samples: the exiting model draws them at sampling's temperature.
        {"compose": [{"name": "early_exit", "threshold": [0.9], "temperature": 1.0}, {"name": "sampling", "n": [4]}]},
    ],
}


def load_spec(path: str | Path) -> dict[str, Any]:
    """A sweep file: TOML (`.toml`) or YAML (`.yaml`, `.yml`) with the keys of `sweep`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {str(path)!r} does not exist")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            spec = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"sweep file {str(path)!r} is not valid TOML: {err}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"sweep file {str(path)!r} is not valid YAML{at}: {problem}") from None
    else:
        raise ValueError(f"sweep file {str(path)!r}; valid extensions: .toml, .yaml, .yml")
    if not isinstance(spec, dict):
        raise ValueError(f"sweep file {str(path)!r} holds {type(spec).__name__}; it must be a table of "
                         f"{', '.join(SPEC_KEYS)}")
    return spec


def from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `sweep` from a sweep file's table (or DEFAULT_SPEC)."""
    from explorer import zoo

    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"sweep file: unknown key {', '.join(map(repr, unknown))}; valid: {', '.join(SPEC_KEYS)}")
    out = {k: v for k, v in spec.items() if k not in ("models", "tasks", "techniques")}
    models = spec.get("models", "zoo")
    out["models"] = [m for m in zoo.names() if has_weights(m)] if models == "zoo" else models
    out["tasks"] = T.names() if spec.get("tasks", "all") == "all" else spec["tasks"]
    entries = spec.get("techniques", [{"name": "baseline"}])
    if not isinstance(entries, list):
        raise ValueError(f"sweep file: techniques={entries!r}; give a list of tables such as "
                         "{name = 'quantize', bits = [4, 8]}")
    out["techniques"] = [t for e in entries for t in techniques_of(e, skip_missing=spec is DEFAULT_SPEC)]
    return out


def techniques_of(entry: dict[str, Any], skip_missing: bool = False) -> list[Technique]:
    """`{name = "quantize", bits = [4, 8]}` -> a grid; `{compose = [entry, entry]}` -> every composition."""
    if not isinstance(entry, dict) or ("name" in entry) == ("compose" in entry):
        raise ValueError(f"sweep file: technique entry {entry!r}; give a table with a 'name' and knobs, "
                         "or a table with 'compose' = a list of such tables")
    if "compose" in entry:
        grids = [techniques_of(e, skip_missing) for e in entry["compose"]]
        return [compose(*combo) for combo in itertools.product(*grids)] if all(grids) else []
    knobs = {k: v for k, v in entry.items() if k != "name"}
    if entry["name"] not in registry:
        if skip_missing:
            return []
        raise ValueError(f"sweep file: unknown technique {entry['name']!r}; {registry.suggest(entry['name'])}"
                         f"known: {', '.join(registry.names())}")
    return list(grid(registry.get(entry["name"]), **knobs))


def has_weights(name: str) -> bool:
    from explorer import zoo

    try:
        zoo.path(name)
        return True
    except FileNotFoundError:
        return False
