"""`explorer ...`: the command line."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="explorer", description="Trade-off Explorer: accuracy versus cost of inference")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run one model on one task and print the result row")
    r.add_argument("--model", default="zoo-m", help="zoo name, local folder or Hugging Face id")
    r.add_argument("--task", default="addition")
    r.add_argument("-n", type=int, default=200, help="number of examples")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", action="store_true", help="print the row as JSON")

    z = sub.add_parser("zoo", help="the embedded model family")
    zsub = z.add_subparsers(dest="zcmd", required=True)
    zsub.add_parser("list", help="print the family with its facts")
    t = zsub.add_parser("train", help="re-create the shipped weights with the project's recipe")
    t.add_argument("names", nargs="*", help="models to train (default: the whole family)")
    t.add_argument("--out", default=None, help="folder to write into (default: the package's zoo)")
    t.add_argument("--text", default=None, help="folder of .txt files for the natural-text share")
    t.add_argument("--jobs", type=int, default=2, help="models trained at once, one thread each")
    t.add_argument("--steps", type=int, default=None, help="override every model's step count")

    b = sub.add_parser("table", help="run every zoo model on every task and print a table (the main job)")
    b.add_argument("-n", type=int, default=100)
    b.add_argument("--seed", type=int, default=0)

    args = p.parse_args(argv)
    try:
        return COMMANDS[(args.cmd, getattr(args, "zcmd", None))](args)
    except (ValueError, KeyError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"explorer: error: {msg}", file=sys.stderr)
        return 2


def cmd_run(args) -> int:
    import explorer as ex

    row = ex.run(args.model, args.task, n=args.n, seed=args.seed)
    if args.json:
        print(json.dumps(row, default=str))
    else:
        width = max(map(len, row))
        for k, v in row.items():
            print(f"{k:<{width}}  {fmt(v)}")
    return 0


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_zoo_list(args) -> int:
    import polars as pl

    from explorer.zoo import card

    print(pl.DataFrame(card.family_facts()))
    return 0


def cmd_zoo_train(args) -> int:
    from explorer.zoo import train_family

    train_family.main(args.names or None, out=args.out, text=args.text, jobs=args.jobs, steps=args.steps)
    return 0


def cmd_table(args) -> int:
    import polars as pl

    import explorer as ex

    rows = []
    for name in ex.zoo.names():
        model = ex.load(name)
        for task in ex.tasks.names():
            r = ex.run(model, task, n=args.n, seed=args.seed, repeats=1)
            metric = "accuracy" if "accuracy" in r else "bits_per_char"
            rows.append({"model": name, "params": r["model_params"], "task": task, "metric": metric,
                         "value": round(r[metric], 3), "lo": round(r[f"{metric}_lo"], 3),
                         "hi": round(r[f"{metric}_hi"], 3),
                         "flops_per_token_analytic": round(r["flops_per_token_analytic"]),
                         "wall_s": round(r["wall_s"], 3)})
            print(f"{name} {task}: {metric}={r[metric]:.3f}", file=sys.stderr)
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=160):
        print(pl.DataFrame(rows))
    return 0


COMMANDS = {("run", None): cmd_run, ("zoo", "list"): cmd_zoo_list, ("zoo", "train"): cmd_zoo_train,
            ("table", None): cmd_table}

if __name__ == "__main__":
    raise SystemExit(main())
