"""run(model, task, technique) -> one result row (a flat dict; the store makes it a table)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import platform
from typing import Any

from explorer import tasks as T
from explorer.cost import bytes_moved_columns, flops_per_token, timed
from explorer.models import Model, load
from explorer.stats import bootstrap_mean
from explorer.compose import compose, decodes, parts_of
from explorer.evaluation import accuracy_columns, evaluate  # noqa: F401  (the one evaluation loop, re-exported)
from explorer.techniques import Baseline, Technique
from explorer.version import __version__

SCHEMA_VERSION = 2
# Bump when a change to the engine changes what a configuration computes (version 2: every
# sampled example draws from its own generator, so samples no longer depend on batch size; version 3:
# plain decoding runs the fused decode path wherever the model supports it, `explorer.generate.decoder`,
# whose logits differ from transformers' in rounding only; the row's `decode_path` column names the path,
# a function of the model and technique already in the key, so the version is all the key needs; version 4:
# on the fused path float32 matmuls of three rows or more run oneDNN's kernel and the prompt runs the
# fused layers (`explorer.layerwise.Projection`, `FusedDecoder.prefill`), again a change of rounding only).
# It is in every row and in its key, so a resumed sweep never keeps a row of an older engine.
ENGINE_VERSION = 4
DEFAULT_TASK_FORMAT = "original"  # a task without a `task_format` attribute: the format it always had


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"explorer_version": __version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "python_version": platform.python_version()}


def task_format(task: T.Task | str) -> str:
    """The task's model-facing format: "zoo" or "natural" once `Task.for_model` bound it (a task that
    gains a new format keys new rows)."""
    if isinstance(task, str):
        task = T.tasks.get(task) if task in T.tasks else None
    return str(getattr(task, "format", None) or getattr(task, "task_format", None) or DEFAULT_TASK_FORMAT)


def config_hash(model: Model | tuple[str, str], task: T.Task | str, technique: Technique, n: int, seed: int,
                batch_size: int | None = None) -> str:
    """The row's key: everything that changes the row's results, and nothing that only times them.

    The target's name, weights fingerprint and dtype; the fingerprint of every other model the
    technique runs (a draft); the task and its format; the technique and every knob; n; the seed;
    the engine version. Not batch_size or repeats: samples are seeded per example, so they change
    only how the row was measured (timings, and costs of a batch such as bytes moved per
    token), never its answers; a row records both (see `explorer.sweep` on reusing a row
    measured with other values). Except for a technique whose results do depend on the batch
    (`batch_changes_results`: speculative decoding picks its draft lengths, or plain decoding,
    from costs measured at the batch size), whose key holds `batch_size` too. `model` may be a
    (name, fingerprint) pair, so a sweep can key a run before loading it.
    """
    from explorer.fingerprint import fingerprint

    if isinstance(model, Model):
        name, revision, dtype, tags = model.name, model.facts.revision, model.facts.dtype, dict(model.tags)
    else:
        (name, revision), dtype, tags = model, "float32", {}
    task_name = task if isinstance(task, str) else task.name
    key = {"model": name, "weights": revision, "dtype": dtype, "task": task_name,
           "task_format": task_format(task), "technique": technique.name, "knobs": technique.knobs(),
           "n": n, "seed": seed, "schema": SCHEMA_VERSION, "engine": ENGINE_VERSION}
    source = getattr(T.tasks.get(task) if isinstance(task, str) and task in T.tasks else task,
                     "source_fingerprint", "")
    if source:  # a task read from a file: its content
        key["task_source"] = source
    if tags:  # a model passed in already changed (a prepared variant)
        key["model_tags"] = tags
    parts = getattr(technique, "parts", None) or (technique,)
    if any(getattr(p, "batch_changes_results", False) for p in parts):
        key["batch_size"] = batch_size
    others = technique.models()
    if others:
        key["other_models"] = {m: fingerprint(m) for m in others}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Upper bounds, so a typo cannot ask for hours of timing or a KV cache larger than the machine.
MAX_REPEATS = 100
MAX_BATCH_SIZE = 4096


def check_positive(value, name: str, valid: str, most: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (most is not None and value > most):
        raise ValueError(f"{name}={value!r}; must be {valid}" + (f", at most {most:,}" if most is not None else ""))
    return value


def run(model: Model | str, task: T.Task | str, technique: Technique | None = None, *,
        n: int = 200, seed: int = 0, repeats: int = 3, batch_size: int = 64, extras: bool = True) -> dict[str, Any]:
    """Evaluate `model` on `n` seeded examples of `task` under `technique`; return one row.

    n: 1..`explorer.tasks.MAX_N` examples (characters of the held-out passage for the likelihood
    task, at most its length). seed: a non-negative integer. repeats: timed repetitions (the
    median is kept). batch_size: prompts per forward; it changes timings only, never answers.
    extras=False leaves out what a technique measures beside the task (its `variant_columns`, e.g.
    quantization's KL on held-out text, seconds on their own, and what its `estimate` leaves out of
    `evaluate`, e.g. a speculative run's target-alone timing): the lab's first estimates use it.
    """
    import torch

    from explorer.generate import check_seed

    n = T.check_n(n)
    seed = check_seed(seed)
    check_positive(repeats, "repeats", "a positive integer (timed repetitions)", MAX_REPEATS)
    check_positive(batch_size, "batch_size", "a positive integer (prompts per forward call)", MAX_BATCH_SIZE)
    technique = technique if technique is not None else Baseline()
    if isinstance(technique, (list, tuple)):  # several techniques as one configuration
        technique = compose(*technique)
    if not isinstance(technique, Technique):
        raise TypeError(f"technique={technique!r}; expected a technique such as explorer.Baseline()")
    if isinstance(task, str):
        task = T.get(task)
    elif not isinstance(task, T.Task):
        raise ValueError(f"task={task!r}; give a task name ({', '.join(T.names())}) or an explorer.tasks.Task")
    if task.kind == "likelihood":
        check_scores_only(technique, task)
        size = len(task.text())
        if n > size:
            raise ValueError(f"n={n} for task {task.name!r}: n counts characters of its held-out passage, "
                             f"which has {size:,}; give n <= {size}")
    model = load(model) if isinstance(model, str) else model
    if not isinstance(model, Model):
        raise ValueError(f"model={model!r}; give a model name (zoo name, folder, Hugging Face id) or "
                         "an explorer.load(...) result")
    task = task.for_model(model)  # its format: the zoo's digits for the zoo, the written form for others
    key = config_hash(model, task, technique, n, seed, batch_size)  # before running: the drafts' weights as they are now
    variant = technique.prepare_for(model, task)
    row: dict[str, Any] = {
        "model": model.name, "model_params": model.facts.params, "model_layers": model.facts.layers,
        "model_width": model.facts.width, "model_revision": model.facts.revision, "task": task.name,
        "task_format": task_format(task), "technique": technique.name,
        **{f"knob_{k}": v for k, v in technique.knobs().items()},
        "n_examples": n, "seed": seed,
    }
    with torch.inference_mode():
        if task.kind == "likelihood":
            row |= likelihood(variant, task.text(), n, repeats)
        else:
            examples = task.examples(n, seed)
            measure = technique.evaluate if extras else technique.estimate
            row |= measure(variant, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)
        if extras:
            row |= technique.variant_columns(variant)
        row |= bytes_moved_columns(variant, row, examples=examples if task.kind != "likelihood" else None,
                                   batch_size=batch_size)
    row["weight_bytes"] = variant.facts.weight_bytes
    dev = getattr(model.hf, "device", torch.device("cpu"))
    row["device"] = f"cpu:{torch.get_num_threads()}threads" if dev.type == "cpu" else str(dev)
    # How the timing columns were measured: a row reused for another request says so (explorer.sweep).
    row["batch_size"], row["repeats"] = batch_size, repeats
    row["engine_version"] = ENGINE_VERSION
    row |= versions()
    row["created_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    row["config_hash"] = key
    return row


def check_scores_only(technique: Technique, task: T.Task) -> None:
    """A likelihood task scores the prepared model; a technique that decodes would not show in it."""
    decoding = [p.name for p in parts_of(technique) if decodes(p)]
    if decoding:
        raise ValueError(f"task {task.name!r} scores text with the (prepared) model; {', '.join(decoding)} "
                         f"changes decoding, which this task never does. Use a generative task: "
                         f"{', '.join(T.GENERATIVE)}")


def likelihood(model: Model, text: str, n: int, repeats: int, window: int = 64) -> dict[str, Any]:
    """Bits per character of the first `n` characters of `text`.

    The text is cut into windows of `window` tokens; each starts afresh after a
    beginning-of-sequence token and every one of its tokens is scored. The zoo
    trained on 64-character windows, and rotary positions beyond what a model
    trained on say nothing about its language modelling, so the task fixes the
    window. Bits per character (not per token) compares models with any tokenizer.
    """
    import torch

    text = text[:n]
    tok = model.tokenizer
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]  # windows cut below: no length warning
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    window = min(window, model.facts.context - 1)
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]

    def score():
        bits = []
        for group in (chunks[:-1], chunks[-1:]):  # equal-length windows in one batch, then the rest
            if not group or not group[0]:
                continue
            x = torch.tensor([[bos] + c for c in group], device=model.hf.device)
            logits = model.hf(input_ids=x).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            bits += (nll.sum(-1) / math.log(2)).tolist()
        per_chunk = [b / max(len(tok.decode(c)), 1) for b, c in zip(bits, chunks)]
        return bits, per_chunk

    (bits, per_chunk), wall, _ = timed(score, repeats)
    lo, hi = bootstrap_mean(per_chunk)
    return {"bits_per_char": sum(bits) / len(text), "bits_per_char_lo": lo, "bits_per_char_hi": hi,
            "interval": "bootstrap95", "chars_scored": len(text), "tokens_scored": len(ids),
            "windows_scored": len(chunks),
            "flops_per_token_analytic": flops_per_token(model.hf.config, window / 2),
            "tokens_generated": 0, "wall_s": wall}
