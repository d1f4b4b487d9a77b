"""Early exit across the zoo: does the time saved track the FLOPs saved?

For every zoo model deeper than one layer and every exit threshold: accuracy,
mean exit layer, analytic FLOPs saving (counting what ran: layers to the exit,
the K/V fill of the skipped layers, every LM head read) and measured wall-clock
saving, both per generated token and against the full model (`Baseline`, the
shared decoding loop) at the same batch size, and the ratio of the two savings.

Early exit saves on generated tokens only; the prompt runs every layer in both.
So the headline compares like with like: the FLOPs saving per generated token
against the wall-clock saving of the decode phase (each row's wall time minus
the prompt's full-depth prefill, timed alone in the same run). End-to-end
figures (prompt included, in FLOPs and in time) are shown beside it.
Every configuration of a model is timed in turn within each repeat, so drift in
machine load hits all alike; wall figures are medians over repeats.

Then per model: whether accuracy and the mean exit layer move together across
thresholds (Spearman), and the wall/FLOPs ratio against the target of 0.7.

    python benchmarks/early_exit.py                          # zoo, addition, n=100, batch 1 and 64
    python benchmarks/early_exit.py --models zoo-l --batch-sizes 1 --repeats 5
    python benchmarks/early_exit.py --criterion entropy --thresholds 0,0.05,0.2,0.5,1,2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import explorer as ex  # noqa: E402
from explorer.cost import flops_per_token  # noqa: E402
from explorer.generate import encode, positions  # noqa: E402

DEFAULT_THRESHOLDS = {"max_prob": (1.0, 0.999, 0.99, 0.95, 0.9, 0.8, 0.6, 0.4, 0.0),
                      "entropy": (0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0),
                      "agreement": (99, 4, 3, 2, 1)}
TARGET = 0.7  # wall-clock saving should be at least this share of the FLOPs saving


def prefill_seconds(model, task, *, n: int, batch_size: int, seed: int) -> float:
    """The prompt's full-depth forward alone, batch by batch, as the shared loop runs it."""
    prompts = [e.prompt for e in task.examples(n, seed)]
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            enc = encode(model.tokenizer, prompts[i : i + batch_size], model.facts.context)
            model.hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     position_ids=positions(enc["attention_mask"]), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start


def measure(model, task, techniques: list, *, n: int, batch_size: int, repeats: int, seed: int):
    """One row per technique (wall_s the median over repeats, timed in turn) and the prefill's seconds."""
    rows: list[dict | None] = [None] * len(techniques)
    walls: list[list[float]] = [[] for _ in techniques]
    prefill = []
    prefill_seconds(model, task, n=batch_size, batch_size=batch_size, seed=seed)  # warm-up: first calls are slow
    for tech in techniques:
        ex.run(model, task, tech, n=batch_size, seed=seed, repeats=1, batch_size=batch_size)
    for _ in range(repeats):
        prefill.append(prefill_seconds(model, task, n=n, batch_size=batch_size, seed=seed))
        for i, tech in enumerate(techniques):
            row = ex.run(model, task, tech, n=n, seed=seed, repeats=1, batch_size=batch_size)
            walls[i].append(row["wall_s"])
            rows[i] = rows[i] or row
    for row, w in zip(rows, walls):
        row["wall_s"] = statistics.median(w)
    return rows, statistics.median(prefill)


def table(model, task, rows: list[dict], prefill_s: float, criterion: str, batch_size: int, n: int, seed: int):
    """Savings per generated token: in the decode phase (the prompt's prefill, the same for
    every row, subtracted) and end to end (prompt included, in FLOPs and in time)."""
    base, exits = rows[0], rows[1:]
    prompt_tokens = sum(len(model.tokenizer(e.prompt)["input_ids"]) for e in task.examples(n, seed))

    def decode_s(r):
        return (r["wall_s"] - prefill_s) / r["tokens_generated"]

    out = []
    for r in exits:
        flops = r["flops_saving_analytic"]
        wall = 1 - decode_s(r) / decode_s(base)
        full, ran = r["flops_per_token_full_analytic"], r["flops_per_token_analytic"]
        prompt_flops = prompt_tokens * flops_per_token(model.hf.config, prompt_tokens / n / 2)
        gen = r["tokens_generated"]
        out.append({"model": model.name, "layers": model.facts.layers, "batch": batch_size,
                    "criterion": criterion, "threshold": r["knob_threshold"], "accuracy": r["accuracy"],
                    "exit_layer_mean": r["exit_layer_mean"], "flops_saving": flops, "wall_saving": wall,
                    "wall_over_flops": wall / flops if flops > 0.02 else None,
                    "e2e_flops_saving": gen * (full - ran) / (prompt_flops + gen * full),
                    "e2e_wall_saving": 1 - (r["wall_s"] / gen) / (base["wall_s"] / base["tokens_generated"]),
                    "kv_fill_time_share": r["kv_fill_share"], "tokens": gen})
    frame = pl.DataFrame(out)
    print(f"\n{model.name} ({model.facts.layers} layers x {model.facts.width}), batch {batch_size}: "
          f"full model accuracy {base['accuracy']:.3f}, decode {decode_s(base) * 1e3:.3f} ms/token, "
          f"prefill {prefill_s / (base['wall_s']) * 100:.0f}% of its wall time")
    print(frame.drop("model", "layers", "batch", "criterion"))
    return frame


def summary(frame: pl.DataFrame) -> None:
    print("\nAccuracy against exit layer across thresholds (Spearman rho; monotone = both never fall "
          "as the threshold rises):")
    for (name, batch), g in frame.group_by(["model", "batch"], maintain_order=True):
        g = g.sort("exit_layer_mean")
        rho = spearmanr(g["exit_layer_mean"], g["accuracy"]).statistic
        acc = g["accuracy"].to_list()
        dips = sum(b < a - 1e-9 for a, b in zip(acc, acc[1:]))
        ratios = g.filter(pl.col("flops_saving") > 0.1)["wall_over_flops"].drop_nulls()
        med = ratios.median() if len(ratios) else float("nan")
        low = ratios.min() if len(ratios) else float("nan")
        verdict = "meets" if med >= TARGET else "misses"
        print(f"  {name} batch {batch}: rho {rho:+.2f}, accuracy dips {dips} of {len(acc) - 1} steps; "
              f"wall/FLOPs saving median {med:.2f} (min {low:.2f}) over rows saving >10% FLOPs: "
              f"{verdict} the {TARGET} target")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated (default: every zoo model deeper than 1)")
    p.add_argument("--task", default="addition")
    p.add_argument("--criterion", default="max_prob", choices=list(DEFAULT_THRESHOLDS))
    p.add_argument("--thresholds", default=None, help="comma-separated thresholds")
    p.add_argument("--min-layers", type=int, default=1)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the table as parquet here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = a.models.split(",") if a.models else ex.zoo.names()
    thresholds = ([float(t) for t in a.thresholds.split(",")] if a.thresholds
                  else DEFAULT_THRESHOLDS[a.criterion])
    if a.criterion == "agreement":
        thresholds = [int(t) for t in thresholds]
    task = ex.tasks.get(a.task)
    print(f"early exit, {a.criterion}, task {a.task}, n={a.n}, repeats {a.repeats}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    frames = []
    for name in names:
        model = ex.load(name)
        if model.facts.layers < 2:
            continue  # one layer: nowhere to exit to
        techs = [ex.Baseline()] + [ex.EarlyExit(a.criterion, t, min_layers=a.min_layers) for t in thresholds]
        for b in [int(x) for x in a.batch_sizes.split(",")]:
            rows, prefill_s = measure(model, task, techs, n=a.n, batch_size=b, repeats=a.repeats, seed=a.seed)
            frames.append(table(model, task, rows, prefill_s, a.criterion, b, a.n, a.seed))
    frame = pl.concat(frames)
    summary(frame)
    if a.out:
        frame.write_parquet(a.out)


if __name__ == "__main__":
    with pl.Config(tbl_rows=100, tbl_cols=20, float_precision=3, tbl_hide_dataframe_shape=True,
                   tbl_hide_column_data_types=True):
        main()
