"""Speculative decoding on the largest zoo target: measured, predicted, and transformers' peer.

For each draft model and draft length, at batch size 1 (the only size
transformers' assisted generation takes), on the mixed generative tasks or on
continuations of held-out text:

- acceptance rate alpha and tokens per target call of our loop;
- cost ratio c: the draft's seconds per one-token forward over the target's;
- measured speed-up: the target alone (explorer.generate) over our loop, wall time;
- predicted speed-up: Leviathan et al. (1 - alpha^(g+1)) / ((1 - alpha)(g c + 1));
- transformers' assisted generation at the same draft length (the draft's
  generation_config: num_assistant_tokens=g, schedule 'constant', confidence
  stop off), its speed-up over the same target-alone baseline, and over
  transformers' own plain greedy generate.

All four decoders run interleaved in every repeat, so drift in machine load
hits them alike; speed-ups are ratios of medians over repeats. Greedy outputs
of all three speculative paths are checked against the target alone.

    python benchmarks/speculative.py                     # target zoo-l, drafts xs, s, m, g = 1..8
    python benchmarks/speculative.py --workload text    # long generations (48 tokens)
    python benchmarks/speculative.py --clock cpu         # on a machine shared with other jobs
    python benchmarks/speculative.py --target zoo-m --drafts zoo-xs --n 12 --repeats 3
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

import explorer as ex  # noqa: E402
from explorer.generate import generate, strip_eos  # noqa: E402
from explorer.speculative import SpecStats, measure_costs, predicted_speedup, speculative_generate  # noqa: E402


def workload(kind: str, n: int, seed: int) -> list[tuple[str, int]]:
    """(prompt, max_new_tokens): n mixed-task examples (answers of 6-11 tokens), or n
    continuations of 48 characters from 32-character openings of the held-out text."""
    if kind == "tasks":
        return [(e.prompt, task.max_new_tokens) for task, e in ex.tasks.mixed(n, seed)]
    text = ex.tasks.heldout_text()
    step = (len(text) - 32) // n
    return [(text[i * step : i * step + 32], 48) for i in range(n)]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn) -> tuple[object, dict[str, float]]:
    """fn's result and its seconds on both clocks: wall, and CPU (this process only; one thread)."""
    start = {k: c() for k, c in CLOCKS.items()}
    out = fn()
    return out, {k: c() - start[k] for k, c in CLOCKS.items()}


def decoders(target, draft, g: int, work):
    tok, eos = target.tokenizer, target.tokenizer.eos_token_id

    # Every side starts from the prompt text, so tokenizing is timed alike.
    def alone():
        return [generate(target.hf, tok, [p], max_new_tokens=m).tokens[0] for p, m in work]

    def ours():
        outs = [speculative_generate(target, draft, tok(p, return_tensors="pt"), draft_len=g, temperature=0.0,
                                     max_new_tokens=m) for p, m in work]
        return [o.tokens[0] for o in outs], SpecStats.total([o.stats for o in outs])

    def hf(assistant):
        kw = {"assistant_model": assistant.hf} if assistant is not None else {}

        def one(p, m):
            enc = tok(p, return_tensors="pt")
            out = target.hf.generate(**enc, max_new_tokens=m, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
            return strip_eos(out[0, enc["input_ids"].shape[1]:].tolist(), eos)

        return lambda: [one(p, m) for p, m in work]

    return {"alone": alone, "ours": ours, "hf_assisted": hf(draft), "hf_plain": hf(None)}


def configure_assistant(draft, g: int) -> None:
    # transformers reads the draft length from the draft's generation_config, not from generate().
    cfg = draft.hf.generation_config
    cfg.num_assistant_tokens = g
    cfg.num_assistant_tokens_schedule = "constant"
    cfg.assistant_confidence_threshold = 0.0  # no early stop: the same fixed draft length as ours


def costs(target, draft, g: int, work, clock: str):
    """c and the verification call's cost at batch size 1: medians over the first 8 prompts."""
    per = [measure_costs(target, draft, target.tokenizer(p, return_tensors="pt"), draft_len=g, calls=15,
                         clock=CLOCKS[clock]) for p, _ in work[:8]]
    return statistics.median(x.cost_ratio for x in per), statistics.median(x.verify_ratio for x in per)


def measure(target, draft, g: int, work, repeats: int, clock: str) -> dict:
    configure_assistant(draft, g)
    c, v = costs(target, draft, g, work, clock)
    runs = decoders(target, draft, g, work)
    seconds: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in runs}
    outputs = {}
    for r in range(repeats + 1):  # the first pass warms up and is not timed
        for k, fn in runs.items():
            outputs[k], took = timed(fn)
            for which in took:
                if r:
                    seconds[k][which].append(took[which])
    med = {k: statistics.median(v[clock]) for k, v in seconds.items()}
    wall = {k: statistics.median(v["wall"]) for k, v in seconds.items()}
    ours_tokens, stats = outputs["ours"]
    alpha = stats.acceptance_rate
    measured, predicted = med["alone"] / med["ours"], predicted_speedup(alpha, g, c)
    hf_speedup = med["alone"] / med["hf_assisted"]
    tpc = stats.tokens_per_target_call
    return {
        "draft": draft.name, "draft_len": g, "acceptance_rate": alpha,
        # Leviathan's tokens per call assume an endless text; answers here are 6-11 tokens.
        "tokens_per_call_predicted": predicted_speedup(alpha, g, 0.0), "tokens_per_target_call": tpc,
        "cost_ratio": c, "verify_cost_ratio": v,
        "speedup_measured": measured, "speedup_measured_wall": wall["alone"] / wall["ours"],
        "speedup_predicted": predicted,
        "measured_over_predicted": measured / predicted,
        "speedup_predicted_from_counts": tpc / (stats.draft_calls / stats.target_calls * c + v),
        "speedup_hf_assisted": hf_speedup, "ours_over_hf_assisted": measured / hf_speedup,
        "hf_assisted_over_hf_plain": med["hf_plain"] / med["hf_assisted"],
        "ms_per_token_alone": 1e3 * med["alone"] / stats.tokens,
        "ms_per_token_ours": 1e3 * med["ours"] / stats.tokens,
        "ms_per_token_hf_assisted": 1e3 * med["hf_assisted"] / stats.tokens,
        "identical": ours_tokens == outputs["alone"] == outputs["hf_assisted"],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="zoo-l")
    ap.add_argument("--drafts", nargs="+", default=["zoo-xs", "zoo-s", "zoo-m"])
    ap.add_argument("--lengths", nargs="+", type=int, default=list(range(1, 9)))
    ap.add_argument("--workload", choices=["tasks", "text"], default="tasks")
    ap.add_argument("--n", type=int, default=24, help="prompts, decoded one at a time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="what speed-ups and costs are measured in; 'cpu' (process CPU seconds) "
                         "discounts time taken by other processes on a shared machine")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    target = ex.load(args.target)
    work = workload(args.workload, args.n, args.seed)
    rows = []
    with torch.inference_mode():
        for name in args.drafts:
            draft = ex.load(name)
            for g in args.lengths:
                rows.append(measure(target, draft, g, work, args.repeats, args.clock))
                r = rows[-1]
                print(f"{name} g={g}: alpha={r['acceptance_rate']:.3f} measured={r['speedup_measured']:.2f}x "
                      f"predicted={r['speedup_predicted']:.2f}x hf={r['speedup_hf_assisted']:.2f}x", flush=True)
    df = pl.DataFrame(rows)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=400, float_precision=2, tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        print(f"\ntarget {args.target}, batch size 1, {args.n} {args.workload} prompts, greedy, "
              f"medians of {args.repeats} interleaved repeats, {args.threads} thread(s), {args.clock} clock "
              "(speedup_measured_wall: wall clock, always)")
        print(df)
        best = df.sort("speedup_measured", descending=True).group_by("draft", maintain_order=True).first()
        best = best.with_columns(
            (pl.col("measured_over_predicted") >= 0.9).alias("meets_0.9x_predicted"),
            (pl.col("ours_over_hf_assisted") >= 1.2).alias("meets_1.2x_hf_assisted"))
        print("\nbest draft length per draft (by measured speed-up):")
        print(best.select("draft", "draft_len", "acceptance_rate", "speedup_measured", "speedup_predicted",
                          "measured_over_predicted", "speedup_hf_assisted", "ours_over_hf_assisted",
                          "meets_0.9x_predicted", "meets_1.2x_hf_assisted", "identical"))


if __name__ == "__main__":
    main()
