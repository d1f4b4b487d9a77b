"""Quantization across the zoo: format x bits x group size, side by side in one run.

For every zoo model, one table: accuracy (mean over the generative tasks), KL and top-1
agreement of next-token distributions against the full-precision model on the
held-out text, bits per character, bytes, bit-FLOPs, and latency ratios against
full precision. Latency is reported only for kernels that really ran (bf16,
int8-dynamic); a simulated row's time is float32 time and is not shown as a
ratio. Latency is measured interleaved (fp32, bf16, int8-dynamic, and a
simulated 4-bit model for contrast, in turn, each repeat), so drift in machine
load hits all alike; ratios are medians over repeats.

Then: where accuracy falls (the knee) per format and grouping, and the largest
model at 4 bits against the next-smaller model at 8 bits, at about equal bytes.

    python benchmarks/quantize.py                       # every zoo model, the four tasks, n=200 each
    python benchmarks/quantize.py --models zoo-xs --n 100 --repeats 3
    python benchmarks/quantize.py --only latency --repeats 9 --threads 2
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
from explorer.generate import generate  # noqa: E402
from explorer.techniques.quantize import Quantize, bit_flops_per_token, windows  # noqa: E402

GROUPS = (None, 32, 64, 128)
INT_BITS = (16, 8, 6, 5, 4, 3, 2)
FP_FORMATS = {8: ("e4m3", "e5m2"), 6: ("e3m2", "e2m3"), 5: ("e2m2",), 4: ("e2m1",), 3: ("e2m0",)}
DROP = 0.05  # an accuracy drop larger than this (absolute) marks the knee


def configs(width: int) -> list[Quantize]:
    """The grid for a model `width` wide; a group size that does not divide it is left out."""
    groups = [g for g in GROUPS if g is None or width % g == 0]
    out = [Quantize(bits=b, group_size=g) for b in INT_BITS for g in groups]
    out += [Quantize(bits=b, group_size=g, symmetric=False) for b in (4, 3, 2) for g in groups]
    out += [Quantize(bits=b, format="fp", fp_format=f, group_size=g)
            for b, fs in FP_FORMATS.items() for f in fs for g in groups]
    out += [Quantize(bits=16, format="fp"), Quantize(bits=16, format="fp", fp_format="e5m10"),
            # The real kernels' rounding alone, without their low-precision activations:
            Quantize(bits=16, format="fp", kernel="simulated"), Quantize(bits=8, kernel="simulated")]
    return out


def latency(model, task, variants: dict[str, ex.Model], repeats: int) -> dict[str, dict[str, float]]:
    """Median ratio to fp32, per variant and workload, timed interleaved."""
    prompts = [e.prompt for e in task.examples(64, seed=1)]
    text = windows(model, ex.tasks.get("shakespeare").text()[:2000])
    tok, mnt = model.tokenizer, task.max_new_tokens
    workloads = {
        "decode_b64": lambda hf: generate(hf, tok, prompts, max_new_tokens=mnt),
        "decode_b1": lambda hf: [generate(hf, tok, [p], max_new_tokens=mnt) for p in prompts[:8]],
        "score_255tok": lambda hf: [hf(input_ids=x) for x in text],
    }
    times = {(v, w): [] for v in variants for w in workloads}
    with torch.inference_mode():
        for r in range(repeats + 1):  # the first round warms up and is dropped
            for w, fn in workloads.items():
                for v, m in variants.items():
                    t = time.perf_counter()
                    fn(m.hf)
                    if r:
                        times[v, w].append(time.perf_counter() - t)
    return {v: {w: statistics.median(a / b for a, b in zip(times[v, w], times["fp32", w]))
                for w in workloads} for v in variants}


def record(model, q: Quantize | None, tasks: list[str], n: int) -> dict:
    """One configuration: its row from explorer.run on the first task, with accuracy averaged over all."""
    row = ex.run(model, tasks[0], q, n=n, repeats=1)
    if q is None:
        row |= {"kernel": "fp32", "kl_vs_full_nats": 0.0, "top1_agreement_vs_full": 1.0, "bits_per_weight": 32.0,
                "bit_flops_per_token_analytic": bit_flops_per_token(model)}
    variant = model if q is None else q.apply(model)  # prepared once for the remaining tasks
    accs = [row["accuracy"]] + [ex.run(variant, t, n=n, repeats=1)["accuracy"] for t in tasks[1:]]
    return row | {f"acc_{t[:3]}": a for t, a in zip(tasks, accs)} | {"accuracy": statistics.mean(accs)}


def model_rows(name: str, tasks: list[str], n: int, repeats: int) -> tuple[list[dict], dict]:
    model = ex.load(name)
    rows = [record(model, q, tasks, n) for q in [None, *configs(model.facts.width)]]
    return rows, latency_of(model, tasks[0], repeats)


def latency_of(model, task: str, repeats: int) -> dict[str, dict[str, float]]:
    kernels = {"fp32": model, "bf16": Quantize(bits=16, format="fp").apply(model),
               "int8 weight-only": Quantize(bits=8).apply(model),
               "int8-dynamic": Quantize(bits=8, kernel="int8-dynamic").apply(model),
               "simulated int4": Quantize(bits=4).apply(model)}  # fp32 compute: its ratio shows the noise
    return latency(model, ex.tasks.get(task), kernels, repeats)


def print_latency(lat: dict[str, dict[str, float]]) -> None:
    print("latency ratios to fp32 (decode batch 64 / decode batch 1 / scoring 255-token windows):")
    for k, v in lat.items():
        print(f"  {k:20s} " + " / ".join(f"{x:.2f}" for x in v.values()))


def table(rows: list[dict], lat: dict) -> pl.DataFrame:
    base = rows[0]
    full_bpc = rows[1]["heldout_bits_per_char_full"]
    out = []
    for r in rows:
        real = r["kernel"] in lat and r["kernel"] != "simulated"
        fmt = "fp32" if r["technique"] == "baseline" else (
            ("int" if r["knob_symmetric"] else "int-asym") if r["knob_format"] == "int" else r["knob_fp_format"])
        out.append({
            "format": fmt, "bits": r.get("knob_bits", 32), "group": r.get("knob_group_size") or "chan",
            "kernel": r["kernel"], "accuracy": r["accuracy"], "d_acc": r["accuracy"] - base["accuracy"],
            **{k: v for k, v in r.items() if k.startswith("acc_")},
            "kl_nats": r["kl_vs_full_nats"], "top1": r["top1_agreement_vs_full"],
            "bpc": r.get("heldout_bits_per_char", full_bpc), "d_bpc": r.get("heldout_bits_per_char", full_bpc) - full_bpc,
            "kB": r["weight_bytes"] / 1e3, "bytes_x": r["weight_bytes"] / base["weight_bytes"],
            "bits_w": r["bits_per_weight"],
            "bitflops_x": r["bit_flops_per_token_analytic"] / base["bit_flops_per_token_analytic"],
            # Only a kernel that really ran has a latency; a simulation's time is fp32 time.
            "lat_b64_x": lat[r["kernel"]]["decode_b64"] if real else None,
            "lat_score_x": lat[r["kernel"]]["score_255tok"] if real else None,
        })
    return pl.DataFrame(out).with_columns(pl.col("group").cast(pl.String))


def knees(df: pl.DataFrame) -> list[str]:
    """Per format family and grouping: the last bit width that holds and the first that falls."""
    lines = []
    full = df.filter(pl.col("format") == "fp32")["accuracy"][0]
    sim = df.filter(pl.col("kernel") == "simulated")
    for fam, sub in [("int", sim.filter(pl.col("format") == "int")),
                     ("int-asym", sim.filter(pl.col("format") == "int-asym")),
                     ("fp (default ExMy)", sim.filter(pl.col("format").is_in(["e5m10", "e4m3", "e3m2", "e2m2",
                                                                               "e2m1", "e2m0"])))]:
        for (group,), g in sub.group_by("group", maintain_order=True):
            g = g.sort("bits", descending=True)
            fell = g.filter(pl.col("accuracy") < full - DROP)
            if fell.is_empty():
                lines.append(f"  {fam:18s} group {group:5s}: holds down to {g['bits'][-1]} bits")
                continue
            b = fell["bits"][0]
            held = g.filter(pl.col("bits") > b)
            acc = " -> ".join(f"{x}b {a:.2f}" for x, a in zip(g["bits"], g["accuracy"]))
            where = f"knee between {held['bits'][-1]} and {b} bits" if len(held) else f"already down at {b} bits"
            lines.append(f"  {fam:18s} group {group:5s}: {where:26s} ({acc})")
    return lines


def equal_bytes(results: dict[str, pl.DataFrame]) -> list[str]:
    names = [n for n in ex.zoo.names() if n in results]
    if len(names) < 2:
        return ["  (needs two models)"]
    big, small = names[-1], names[-2]
    pick = [(big, 4, "int", "chan"), (big, 4, "int", "32"), (big, 4, "e2m1", "chan"), (big, 4, "e2m1", "32"),
            (big, 3, "int", "32"), (big, 3, "int-asym", "32"), (big, 3, "e2m0", "32"),
            (small, 8, "int", "chan"), (small, 8, "e4m3", "chan"), (small, 16, "e8m7", "chan"),
            (small, 32, "fp32", "chan"), (big, 32, "fp32", "chan")]
    lines = [f"  {'model':7s} {'format':8s} {'bits':>4s} {'group':>5s} {'kernel':13s} {'kB':>7s} {'accuracy':>8s} "
             f"{'heldout bpc':>11s}"]
    for name, bits, fmt, group in pick:
        rows = results[name].filter((pl.col("bits") == bits) & (pl.col("format") == fmt) & (pl.col("group") == group))
        for r in rows.iter_rows(named=True):
            lines.append(f"  {name:7s} {fmt:8s} {bits:4d} {group:>5s} {r['kernel']:13s} {r['kB']:7.1f} "
                         f"{r['accuracy']:8.3f} {r['bpc']:11.3f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="zoo names (default: all trained ones)")
    ap.add_argument("--tasks", nargs="*", default=list(ex.tasks.GENERATIVE), help="accuracy is their mean")
    ap.add_argument("--n", type=int, default=200, help="examples per task")
    ap.add_argument("--repeats", type=int, default=5, help="latency rounds (medians)")
    ap.add_argument("--only", choices=["latency"], default=None, help="only time the real kernels")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="write every row to this parquet file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.models or [n for n in ex.zoo.names() if (ex.zoo.weights_root() / n / "config.json").exists()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; accuracy = mean over "
          f"{', '.join(args.tasks)} (n={args.n} each); "
          f"latency = median ratio to fp32 over {args.repeats} interleaved rounds")
    results, every = {}, []
    pl.Config.set_tbl_rows(-1)
    pl.Config.set_tbl_cols(-1)
    pl.Config.set_tbl_width_chars(250)
    pl.Config.set_float_precision(3)
    for name in names:
        t = time.time()
        if args.only == "latency":
            print(f"\n== {name} ==")
            print_latency(latency_of(ex.load(name), args.tasks[0], args.repeats))
            continue
        rows, lat = model_rows(name, args.tasks, args.n, args.repeats)
        every += rows
        results[name] = df = table(rows, lat)
        print(f"\n== {name}: {rows[0]['model_params']:,} params, {rows[0]['model_layers']} x {rows[0]['model_width']} "
              f"({time.time() - t:.0f} s) ==")
        print(df)
        print_latency(lat)
        print(f"knee (accuracy more than {DROP} below fp32's {df['accuracy'][0]:.3f}), simulated rows:")
        print("\n".join(knees(df)))
    if args.only == "latency":
        return
    print("\n== at about equal bytes: the largest model at 4 bits vs the next-smaller at 8 bits ==")
    print("\n".join(equal_bytes(results)))
    if args.out:
        pl.DataFrame(every, infer_schema_length=None).write_parquet(args.out)


if __name__ == "__main__":
    main()
