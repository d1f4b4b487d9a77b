"""Speculative decoding on the largest zoo target: measured, predicted, and transformers' peer.

The issue's figures (issue 19), in one invocation of under 8 minutes on a quiet 2-core machine:

    python benchmarks/speculative.py --quick

prints, for three whole runs in a row (`--runs 3`), each draft at its best length and its
measured / predicted speed-up at batch size 1, then batches 8 and 64 against the target alone.

For each draft model and draft length, at batch size 1 (the only size
transformers' assisted generation takes), on continuations of held-out text or on
the mixed generative tasks:

- acceptance rate alpha and tokens per target call of our loop;
- cost ratio c: the draft's seconds per one-token call over the target's, and v: a
  verification call (draft_len + 1 tokens) over a one-token call, both measured on
  the layers the loop runs (`explorer.speculative.FusedSide`), in steady state as the
  loop and the target alone run them (`measure_costs`: blocks of rounds, blocks of
  one-token calls; a call timed right after the other kind runs up to 35% slow);
- measured speed-up: the target alone decoding one token per call through those same
  layers (`explorer.speculative.decode_alone`), over our loop: the unit c and v are
  measured in, so measured and predicted compare like with like. `speedup_vs_generate`
  is against the engine's plain path (`explorer.generate`), what a user gets;
- predicted speed-up, two ways, both from the draft's own alpha and costs:
  `speedup_predicted` is Leviathan et al.'s Theorem 3.8,
  (1 - alpha^(g+1)) / ((1 - alpha)(g c + 1)), which takes a verification call to cost
  one one-token call; `speedup_predicted_verify` puts the measured v in its place,
  (1 - alpha^(g+1)) / ((1 - alpha)(g c + v)). Leviathan's v = 1 overstates every
  speed-up by (g c + v) / (g c + 1), a cost of the hardware, not of the loop (below).
  Both are printed; the loop's own losses are what separates the measured speed-up
  from `speedup_predicted_verify`;
- `speedup_predicted_from_counts`: the same cost model fed with the tokens per target
  call and draft calls per target call this run made (truncated rounds included);
- transformers' assisted generation at the same draft length (the draft's
  generation_config: num_assistant_tokens=g, schedule 'constant', confidence
  stop off), its speed-up over the same target-alone baseline, and over
  transformers' own plain greedy generate (skipped with --no-peers and in --quick).

Where batch-1 time goes (zoo-xs drafting g = 2 for zoo-l, the 10 text prompts, CPU time,
2.2 ms per round, profiled by section, load ~3): the target's verification calls 73%,
its calls in the last rounds (cut short by max_new_tokens) 3%, its first call (the
prompt and the first proposals) 4%; the draft's one-token calls 10%, its two-token
calls (after a fully accepted round it reads its last proposal and the target's token)
2%, its prompt 0.6%; everything else (the loop's Python, both rollbacks, statistics,
log-probabilities, per-prompt setup) 3.7%, down from 9% (rollback by an integer count,
proposals and updates as Python integers, no mask tensor while nothing is padded, the
log-probability summed once per row).

Why 0.9 of Leviathan's prediction is out of reach here: it needs g c + v <= (g c + 1) r / 0.9,
r the loop's own share (measured / speedup_predicted_verify), so even a lossless loop
(r = 1) needs v <= 1.11 + 0.11 g c: 1.13 for zoo-xs (g c ~ 0.2), 1.14 for zoo-s (0.3),
1.21 for zoo-m (0.9). The unit is MKL's one-row product (F.linear: `decode_alone` is the
fastest one-token path); a verification of 3+ positions runs oneDNN's packed linear
(`explorer.layerwise.Projection`), nearly flat in rows but with a fixed cost above MKL's
one row; 2 positions stay on MKL, whose cost grows with every row (MKL's packed GEMM
too: 576x192 at 1/2/3/4 rows 6.8/11.1/15.3/18.6 us). Zoo-l, whole calls back to back,
CPU time, load ~1: MKL one row 997 us; 2 rows MKL 1309 (v 1.31); oneDNN 1/2/3/4/5 rows
1305/1414/1486/1513/1532 us (v 1.49-1.54 at 3-5). The benchmark's v at load ~3 is
1.15-1.65 (it moves with load: weights stream from a shared L3). `--quick --clock cpu` at
load ~3 (the whole --quick: 5.5 minutes), three runs, each draft at its best length
(g, alpha, c, v: measured x, Leviathan x (ratio), verify-cost x (ratio)):
  zoo-xs: g1 .55 .11 1.28: 1.09 / 1.40 (0.77) / 1.12 (0.97); g3 .52 .09 1.36: 1.26 / 1.52
          (0.83) / 1.18 (1.06); g1 .55 .10 1.25: 1.10 / 1.40 (0.79) / 1.14 (0.96)
  zoo-s:  g1 .53 .23 1.34: 0.96 / 1.24 (0.77) / 0.97 (0.98); g3 .58 .14 1.15: 1.24 / 1.51
          (0.82) / 1.36 (0.91); g3 .58 .20 1.65: 0.94 / 1.34 (0.70) / 0.95 (0.99)
  zoo-m:  g3 .65 .47 1.62: 0.80 / 0.96 (0.83) / 0.77 (1.05); g2 .63 .51 1.45: 0.91 / 1.00
          (0.91) / 0.82 (1.11); g3 .65 .45 1.42: 0.80 / 0.99 (0.81) / 0.84 (0.95)
The loop holds 0.9 of the verify-cost prediction in every run (0.91-1.11); Leviathan's
ratio is 0.70-0.91, the (g c + 1) / (g c + v) that v > 1 costs. Zoo-m drafting for zoo-l
does not pay at batch 1 (c ~0.5: predicted ~1.0, measured 0.8-0.9).

Why the text workload for the batch-1 figures: Leviathan's expected tokens per round
assume the text goes on; the tasks' answers end after 6-11 tokens, so most rounds are
cut short and the prompt's call is a third of the time, and neither is what the
formula predicts (`tokens_per_call_achieved_share` shows the first). Continuations of
64 tokens keep both small; the tasks workload stays available (`--workload tasks`).

All decoders run interleaved in every repeat, so drift in machine load hits them
alike; speed-ups are ratios of medians over repeats. Greedy outputs of every path
are checked against the target alone (`identical`).

    python benchmarks/speculative.py --quick                    # the issue's figures (about 6 min quiet)
    python benchmarks/speculative.py --quick --clock cpu        # on a machine shared with other jobs
    python benchmarks/speculative.py                            # tasks workload, g = 1..8, with transformers' peers
    python benchmarks/speculative.py --workload text --new-tokens 64 --runs 3 --no-peers
    python benchmarks/speculative.py --quick --batched-only --clock cpu   # the batched figures alone (~1.5 min)
    python benchmarks/speculative.py --batch-sizes 8 64 --lengths 4   # batched: never slower than the target

Batched (--batch-sizes): the technique as `explorer.run` runs it, greedy, against the
target alone (explorer.generate) at the same batch size: its speed-up, which mode ran
(`spec_mode`: speculative, plain or mixed) and why (`spec_plan`: the length plan's
costs measured at that batch size and, where a length paid on paper, the trial of
both modes on the first batch, `trial_gain`). Where no length pays (batch 64 here:
verifying g + 1 tokens costs nearly g + 1 calls) or the trial did not find speculating
clearly faster, the batch decodes through the target alone's own path. Each repeat
runs three sides in rotated order: the technique, the target alone and the target
alone again; ratios are taken per repeat, medians printed with their min-max. The
last pair (`aa`) runs identical code, so its spread is the noise band: a plain-mode
row's ratio is 1 within it (`within_noise_of_target_alone`).

Measured (zoo-l, addition, 64 prompts, CPU clock, after the oneDNN projections, load 1.3,
so indicative only): batch 8 speculates with zoo-s (1.09x, repeats 1.06-1.11; acceptance
0.95) and decodes plainly with zoo-xs (trial 0.99-1.03x: acceptance 0.85, rounds cut short
by 7-token answers); zoo-m (acceptance 1.00) sits on the trial's margin (trials 1.05-1.10x
in four processes), so it speculates in some (1.09-1.10x measured then) and decodes plainly
in others (1.00x). Batch 64 decodes plainly with every draft (trials 0.92-1.04x; verifying
2 tokens per row costs 1.65 one-token calls). Plain rows came out 0.99-1.01x and the target
alone against itself 0.99-1.02x (medians of 11; single repeats 0.89-1.09): the noise band.
The other five (draft, batch) pairs took the same mode in three processes at load 1.2-1.9.
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
from explorer.speculative import (SpecStats, decode_alone, measure_costs, predicted_speedup,  # noqa: E402
                                  speculative_generate)


def workload(kind: str, n: int, seed: int, new_tokens: int = 48) -> list[tuple[str, int]]:
    """(prompt, max_new_tokens): n mixed-task examples (answers of 6-11 tokens), or n
    continuations of `new_tokens` characters from 32-character openings of the held-out text."""
    if kind == "tasks":
        return [(e.prompt, task.max_new_tokens) for task, e in ex.tasks.mixed(n, seed)]
    text = ex.tasks.heldout_text()
    step = (len(text) - 32) // n
    return [(text[i * step : i * step + 32], new_tokens) for i in range(n)]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn) -> tuple[object, dict[str, float]]:
    """fn's result and its seconds on both clocks: wall, and CPU (this process only; one thread)."""
    start = {k: c() for k, c in CLOCKS.items()}
    out = fn()
    return out, {k: c() - start[k] for k, c in CLOCKS.items()}


def plain_path(target):
    """What the target alone decodes through: the fastest plain path this engine has for it
    (the fused layers where they run the model), as the speculative loop's sides are."""
    import explorer.generate as G

    if hasattr(G, "decoder"):  # generate picks the fused path itself ("auto")
        return target.hf, G.decoder(target.hf)[1]
    from explorer.layerwise import fused_decoder

    fused = fused_decoder(target.hf)
    return (fused, "fused") if fused is not None else (target.hf, "transformers")


def decoders(target, draft, g: int, work, peers: bool = True):
    tok, eos = target.tokenizer, target.tokenizer.eos_token_id
    plain = plain_path(target)[0]

    # Every side starts from the prompt text, so tokenizing is timed alike.
    def alone():
        return [generate(plain, tok, [p], max_new_tokens=m).tokens[0] for p, m in work]

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

    def same_layers():  # the target alone through the loop's own Decoder: the cost model's unit
        return [decode_alone(target, tok(p, return_tensors="pt"), max_new_tokens=m)[0] for p, m in work]

    runs = {"alone": alone, "alone_same_layers": same_layers, "ours": ours}
    return runs | ({"hf_assisted": hf(draft), "hf_plain": hf(None)} if peers else {})


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


def measure(target, draft, g: int, work, repeats: int, clock: str, peers: bool = True) -> dict:
    configure_assistant(draft, g)
    c, v = costs(target, draft, g, work, clock)
    runs = decoders(target, draft, g, work, peers)
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
    # Measured against the target alone through the same layers the costs c and v are measured in
    # (the prediction's unit); speedup_vs_generate is against the engine's own plain path.
    measured, predicted = med["alone_same_layers"] / med["ours"], predicted_speedup(alpha, g, c)
    # Leviathan's Theorem 3.8 takes a verification call (g + 1 tokens) to cost one one-token call;
    # v is what it costs here. Same expected tokens per round, over g c + v instead of g c + 1.
    predicted_v = predicted * (g * c + 1) / (g * c + v)
    hf_speedup = med["alone"] / med["hf_assisted"] if peers else float("nan")
    tpc = stats.tokens_per_target_call
    return {
        "draft": draft.name, "draft_len": g, "acceptance_rate": alpha,
        # Leviathan's tokens per call assume an endless text; answers of the tasks are 6-11 tokens.
        "tokens_per_call_predicted": predicted_speedup(alpha, g, 0.0), "tokens_per_target_call": tpc,
        "cost_ratio": c, "verify_cost_ratio": v,
        "speedup_measured": measured, "speedup_measured_wall": wall["alone_same_layers"] / wall["ours"],
        "speedup_vs_generate": med["alone"] / med["ours"],
        "speedup_predicted": predicted,
        "measured_over_predicted": measured / predicted,
        "speedup_predicted_verify": predicted_v,
        "measured_over_predicted_verify": measured / predicted_v,
        "speedup_predicted_from_counts": tpc / (stats.draft_calls / stats.target_calls * c + v),
        # Leviathan's tokens per call assume every round may run its full length; short answers
        # cut rounds (the end token, max_new_tokens). This share is what truncation leaves of them,
        # and measured over predicted-from-counts is what per-call overhead leaves of the rest.
        "tokens_per_call_achieved_share": tpc / predicted_speedup(alpha, g, 0.0),
        "measured_over_predicted_from_counts": measured / (tpc / (stats.draft_calls / stats.target_calls * c + v)),
        "speedup_hf_assisted": hf_speedup, "ours_over_hf_assisted": measured / hf_speedup,
        "hf_assisted_over_hf_plain": med["hf_plain"] / med["hf_assisted"] if peers else float("nan"),
        "ms_per_token_alone": 1e3 * med["alone"] / stats.tokens,
        "ms_per_token_ours": 1e3 * med["ours"] / stats.tokens,
        "ms_per_token_hf_assisted": 1e3 * med["hf_assisted"] / stats.tokens if peers else float("nan"),
        "identical": ours_tokens == outputs["alone"] == outputs["alone_same_layers"]
        == outputs.get("hf_assisted", ours_tokens),
    }


def batched(target, draft_name: str, g: int, sizes: list[int], n: int, repeats: int, clock: str) -> list[dict]:
    """Speculative (the technique's plan per batch size) against the target alone, batched.

    Three sides per repeat, their order rotated from repeat to repeat: the technique, the target
    alone, and the target alone again. The last pair runs identical code, so its ratio (`aa`) is
    the timing noise band a plain-mode row's ratio must sit in. Ratios are per repeat (calls
    side by side), then the median, with the spread over repeats (min-max)."""
    technique = ex.Speculative(draft=draft_name, draft_len=g)
    task = ex.tasks.get("addition")
    prompts = [e.prompt for e in task.examples(n, 0)]
    m = task.max_new_tokens
    out = []
    for b in sizes:
        chunks = [prompts[i : i + b] for i in range(0, n, b)]
        technique.measure_plan(target, chunks, m)  # as explorer.run does: before anything is timed
        plan = technique.length_plan(target, chunks[0], m)

        def alone():
            return [generate(target.hf, target.tokenizer, c, max_new_tokens=m) for c in chunks]

        def spec():
            return [technique.generate(target, c, max_new_tokens=m, seed=0) for c in chunks]

        sides = {"spec": spec, "alone": alone, "alone_again": alone}
        secs: dict[str, list[float]] = {k: [] for k in sides}
        gens = {}
        load = os.getloadavg()[0]
        for r in range(repeats + 1):  # the first pass warms up and is not timed
            names = list(sides)[r % 3:] + list(sides)[: r % 3]
            for k in names:
                gens[k], took = timed(sides[k])
                if r:
                    secs[k].append(took[clock])
        ratios = [a / s for a, s in zip(secs["alone"], secs["spec"])]
        aa = [a / s for a, s in zip(secs["alone"], secs["alone_again"])]
        stats = SpecStats.total([x.stats for x in gens["spec"]])
        out.append({"draft": draft_name, "draft_len": g, "batch": b,
                    "spec_mode": stats.columns()["spec_mode"], "acceptance_rate": stats.acceptance_rate,
                    "plan_alpha": plan.prior, "plan_best_len": plan.best(plan.prior),
                    "trial_gain": plan.trial.gain if plan.trial else None,
                    "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
                    "aa": statistics.median(aa), "aa_min": min(aa), "aa_max": max(aa),
                    "ms_alone": 1e3 * statistics.median(secs["alone"]),
                    "load": (load + os.getloadavg()[0]) / 2,
                    "identical": [t for x in gens["spec"] for t in x.tokens]
                    == [t for x in gens["alone"] for t in x.tokens],
                    "spec_plan": plan.describe()})
        r = out[-1]
        print(f"  batch {b} {draft_name} g<={g}: {r['spec_mode']}, speed-up {r['speedup']:.3f}x "
              f"({r['speedup_min']:.3f}-{r['speedup_max']:.3f}), target alone vs itself {r['aa']:.3f}x "
              f"({r['aa_min']:.3f}-{r['aa_max']:.3f}), load {r['load']:.2f}\n    plan: {r['spec_plan']}", flush=True)
    return out


TABLE = dict(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=400, float_precision=2, tbl_hide_column_data_types=True,
             tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN")


def batch_one(target, work, args, run: int) -> pl.DataFrame:
    """One full batch-1 run: every draft at every length; the best length per draft."""
    rows = []
    for name in args.drafts:
        draft = ex.load(name)
        for g in args.lengths:
            rows.append(measure(target, draft, g, work, args.repeats, args.clock, args.peers))
            r = rows[-1]
            print(f"run {run} {name} g={g}: alpha={r['acceptance_rate']:.3f} measured={r['speedup_measured']:.2f}x "
                  f"predicted={r['speedup_predicted']:.2f}x (verify cost in: {r['speedup_predicted_verify']:.2f}x)"
                  + (f" hf={r['speedup_hf_assisted']:.2f}x" if args.peers else ""), flush=True)
    df = pl.DataFrame(rows).with_columns(pl.lit(run).alias("run"))
    with pl.Config(**TABLE):
        print(f"\nrun {run}: target {args.target}, batch size 1, {args.n} {args.workload} prompts, greedy, "
              f"medians of {args.repeats} interleaved repeats, {args.threads} thread(s), {args.clock} clock "
              "(speedup_measured_wall: wall clock, always)")
        print(df.drop("run"))
    best = df.sort("speedup_measured", descending=True).group_by("draft", maintain_order=True).first()
    return best.with_columns(
        (pl.col("measured_over_predicted") >= 0.9).alias("meets_0.9x_predicted"),
        (pl.col("measured_over_predicted_verify") >= 0.9).alias("meets_0.9x_predicted_verify"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="zoo-l")
    ap.add_argument("--drafts", nargs="+", default=["zoo-xs", "zoo-s", "zoo-m"])
    ap.add_argument("--lengths", nargs="+", type=int, default=list(range(1, 9)))
    ap.add_argument("--workload", choices=["tasks", "text"], default="tasks")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens per continuation (--workload text)")
    ap.add_argument("--n", type=int, default=24, help="prompts, decoded one at a time")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats per measurement (medians)")
    ap.add_argument("--runs", type=int, default=None,
                    help="whole batch-1 runs in a row (fresh costs and timings each), each run's ratios printed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=list(CLOCKS), default="wall",
                    help="what speed-ups and costs are measured in; 'cpu' (process CPU seconds) "
                         "discounts time taken by other processes on a shared machine")
    ap.add_argument("--no-peers", dest="peers", action="store_false",
                    help="skip transformers' assisted and plain generate")
    ap.add_argument("--batch-sizes", nargs="*", type=int, default=[],
                    help="also run batched (e.g. 8 64): the technique's length plan against the target alone")
    ap.add_argument("--batch-n", type=int, default=128, help="prompts for the batched runs")
    ap.add_argument("--batch-repeats", type=int, default=11,
                    help="interleaved repeats of each batched comparison (three sides each: speculative, the "
                         "target alone, the target alone again)")
    ap.add_argument("--batched-only", action="store_true",
                    help="skip the batch-1 runs: only the batched section (with --quick: batches 8 and 64, "
                         "about a minute)")
    ap.add_argument("--quick", action="store_true",
                    help="the issue's figures: text workload (10 continuations of 64 tokens), lengths 1-3, "
                         "3 runs (or --runs), no transformers peers, then batches 8 and 64 at draft_len 4 on "
                         "64 prompts")
    args = ap.parse_args(argv)
    if args.quick:
        args.workload, args.new_tokens, args.n, args.lengths = "text", 64, 10, [1, 2, 3]
        args.runs, args.peers = args.runs or 3, False
        args.batch_sizes, args.batch_n = args.batch_sizes or [8, 64], 64
    torch.set_num_threads(args.threads)
    target = ex.load(args.target)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, target alone decodes through: {plain_path(target)[1]}")
    work = workload(args.workload, args.n, args.seed, args.new_tokens)
    bests = []
    with torch.inference_mode():
        args.runs = 0 if args.batched_only else args.runs or 1
        for run in range(1, args.runs + 1):
            bests.append(batch_one(target, work, args, run))
            with pl.Config(**TABLE):
                print(f"\nrun {run}: best draft length per draft (by measured speed-up):")
                print(bests[-1].select(
                    "draft", "draft_len", "acceptance_rate", "cost_ratio", "verify_cost_ratio", "speedup_measured",
                    "speedup_vs_generate",
                    "speedup_predicted", "measured_over_predicted", "speedup_predicted_verify",
                    "measured_over_predicted_verify", "measured_over_predicted_from_counts",
                    "tokens_per_call_achieved_share", "speedup_hf_assisted", "ours_over_hf_assisted",
                    "meets_0.9x_predicted", "meets_0.9x_predicted_verify", "identical"), flush=True)
    if bests:
        summarize(bests, args)
    if args.batch_sizes:
        print(f"\nbatched, greedy, addition, {args.batch_n} prompts, {args.clock} clock, medians of "
              f"{args.batch_repeats} interleaved repeats (ratios per repeat; min-max beside):")
        with torch.inference_mode():
            brows = [r for name in args.drafts
                     for r in batched(target, name, max(args.lengths) if not args.quick else 4, args.batch_sizes,
                                      args.batch_n, args.batch_repeats, args.clock)]
        bdf = pl.DataFrame(brows).drop("spec_plan").with_columns(
            (pl.col("speedup") >= 1.0).alias("meets_1.0x_target_alone"),
            # identical code on both sides (plain mode) can only be judged against the timing noise
            (pl.col("speedup") >= pl.col("aa_min")).alias("within_noise_of_target_alone"))
        with pl.Config(**TABLE):
            print(bdf)


def summarize(bests: list, args) -> None:
    every = pl.concat(bests)
    summary = every.group_by("draft", maintain_order=True).agg(
        pl.col("draft_len").alias("best_len_per_run"),
        pl.col("measured_over_predicted").round(3).alias("measured/predicted per run"),
        pl.col("measured_over_predicted").min().alias("worst"),
        pl.col("measured_over_predicted_verify").round(3).alias("measured/predicted(verify cost) per run"),
        pl.col("measured_over_predicted_verify").min().alias("worst_verify"),
        pl.col("identical").all())
    with pl.Config(**TABLE):
        print(f"\nbatch 1, every draft at its best length, {args.runs} run(s): measured / predicted "
              "(Leviathan; and with the verification's measured cost), target >= 0.9 in each run")
        print(summary)


if __name__ == "__main__":
    main()
