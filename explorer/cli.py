"""`explorer ...`: the command line."""
from __future__ import annotations

import argparse
import json
import sys

from explorer.tasks import MAX_N


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line naming it and where help is, and main() returns 2
    (argparse itself prints the whole usage block and exits the process)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def bounded_int(name: str, low: int, high: int | None = None, what: str = ""):
    """An argparse type: an integer in [low, high], refused by name otherwise."""
    key = name.lstrip("-")

    def parse(text: str) -> int:
        valid = (f"an integer from {low:,} to {high:,}" if high is not None and high < 2**62
                 else "a non-negative integer" if low == 0 else f"an integer >= {low}")
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key}={text!r} is not an integer; give {valid}{what}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{key}={text} is out of range; give {valid}{what}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake prints one line `explorer: error: <what>; <fix>` and returns 2."""
    import os
    import warnings

    # Warnings (a skipped store file, a reused measurement) as one plain line each, not source code.
    before = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_a, **_k: f"explorer: warning: {message}\n"
    try:
        args, extra = parser().parse_known_args(argv)
        if extra:  # named against the command's own help, not the top level's
            command = " ".join(c for c in (args.cmd, getattr(args, "zcmd", None)) if c)
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see `explorer {command} --help`)")
        return COMMANDS[(args.cmd, getattr(args, "zcmd", None))](args)
    except UsageError as err:
        return fail(str(err))
    except KeyboardInterrupt:
        print("explorer: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - sorted below: a user's mistake, or a bug
        message = user_error(err)
        if message is None or os.environ.get("EXPLORER_DEBUG"):
            raise
        return fail(message)
    finally:
        warnings.formatwarning = before


def fail(message: str) -> int:
    print(f"explorer: error: {message}", file=sys.stderr)
    return 2


def user_error(err: BaseException) -> str | None:
    """The one-line message for an error a user can fix, or None for a bug (which keeps its traceback)."""
    try:
        import yaml

        yaml_errors: tuple = (yaml.YAMLError,)
    except ImportError:  # pragma: no cover
        yaml_errors = ()
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    if isinstance(err, KeyError):
        return str(err.args[0]) if err.args else "unknown name"
    if isinstance(err, (ValueError, TypeError, LookupError)):
        return str(err)
    if isinstance(err, yaml_errors + (tomllib.TOMLDecodeError,)):
        return f"sweep file syntax: {' '.join(str(err).split())}"
    if isinstance(err, OSError):  # permissions, missing folders, full disks: name the path and the fix
        where = f" {err.filename!r}" if getattr(err, "filename", None) else ""
        if err.strerror and where:
            return f"{err.strerror}:{where}; give a path that exists and that you may use"
        return str(err)
    return None


def parser() -> Parser:
    p = Parser(prog="explorer", description="Trade-off Explorer: accuracy versus cost of inference")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    r = sub.add_parser("run", help="run one model on one task and print the result row")
    r.add_argument("--model", default="zoo-m", help="zoo name, local folder or Hugging Face id")
    from explorer import tasks as T

    r.add_argument("--task", default="addition", choices=T.names(), help="a registered task")
    r.add_argument("-n", type=N, default=200, help=f"number of examples (1 to {MAX_N:,})")
    r.add_argument("--seed", type=SEED, default=0, help="a non-negative integer")
    r.add_argument("--technique", action="append", default=None, metavar="NAME",
                   help="a registered technique (`explorer techniques` lists them); repeat to compose")
    r.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="a knob of the technique(s), e.g. bits=4 (a value is read as JSON, else as text)")
    r.add_argument("--json", action="store_true", help="print the row as JSON")

    sub.add_parser("techniques", help="the registered techniques: roles, knobs with their ranges, default cost axis")

    z = sub.add_parser("zoo", help="the embedded model family")
    zsub = z.add_subparsers(dest="zcmd", required=True)
    zsub.add_parser("list", help="print the family with its facts")
    sub.add_parser("models", help="every model loadable by name: the zoo and the real models (SmolLM2)")
    t = zsub.add_parser("train", help="re-create the shipped weights with the project's recipe")
    t.add_argument("names", nargs="*", help="models to train (default: the whole family); 'smollm2-drafts': "
                   "the distilled and plain-text drafts for SmolLM2 (36 min wall on a shared 2-core machine, one thread)")
    t.add_argument("--out", default=None, help="folder to write into (default: the package's zoo)")
    t.add_argument("--text", default=None, help="folder of .txt files for the natural-text share")
    t.add_argument("--jobs", type=bounded_int("--jobs", 1, 64), default=2, help="models trained at once, one thread each")
    t.add_argument("--steps", type=bounded_int("--steps", 1, 10_000_000), default=None, help="override every model's step count")

    b = sub.add_parser("table", help="run every zoo model on every task and print a table (the main job)")
    b.add_argument("-n", type=N, default=100, help=f"examples per run (1 to {MAX_N:,})")
    b.add_argument("--seed", type=SEED, default=0, help="a non-negative integer")

    s = sub.add_parser("sweep", help="fill the results store from a sweep file (TOML or YAML), or the default sweep")
    s.add_argument("file", nargs="?", help="sweep file (default: every zoo model and task, the baseline and a "
                   "small grid per technique)")
    s.add_argument("--store", default=None, help="results folder (default: the per-user cache folder)")
    s.add_argument("--executor", default="local", choices=["local", "ray"])
    s.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    s.add_argument("--workers", type=bounded_int("--workers", 1, 1024), default=None, help="Ray worker processes (default: one per CPU)")
    s.add_argument("-n", type=N, default=None, help=f"examples per run, 1 to {MAX_N:,} (overrides the file)")
    s.add_argument("--seed", type=SEED, default=None, help="a non-negative integer (overrides the file)")
    s.add_argument("--remeasure", action="store_true", help="run again the stored rows that were measured with "
                   "another batch_size or repeats (by default they are reused and reported)")
    s.add_argument("--dry-run", action="store_true", help="list the configurations and which are stored; run none")

    f = sub.add_parser("frontier", help="print the Pareto frontier of the stored runs and write its chart")
    f.add_argument("--store", default=None, help="results folder (default: the per-user cache folder)")
    f.add_argument("--cost", default="flops_per_problem_analytic", help="any numeric column; the default is "
                   "derived: generated tokens per problem x analytic FLOPs per token")
    f.add_argument("--quality", default="accuracy")
    f.add_argument("--lower-is-better", action="store_true", help="override: quality improves downwards (each "
                   "known quality's direction, e.g. bits_per_char's, is taken from explorer.metrics anyway)")
    f.add_argument("--by", default="task", help="one frontier per value of this column ('' for one overall)")
    f.add_argument("--task", default=None, help="only rows of this task")
    f.add_argument("--all", action="store_true", help="print every point with its status, not only the frontier")
    f.add_argument("--at", action="append", default=[], metavar="NAME=VALUE",
                   help="re-read stored rows at a technique's filter, e.g. k=4 (sampling rows at 4 samples)")
    f.add_argument("--out", default=None, help="write the chart: .html, .png or .svg")

    e = sub.add_parser("export", help="write every stored row to one .parquet or .csv file")
    e.add_argument("out", help="file to write: .parquet or .csv")
    e.add_argument("--store", default=None, help="results folder (default: the per-user cache folder)")

    lab = sub.add_parser("lab", help="open JupyterLab on the workshop's tour notebook (the embedded family, offline)")
    lab.add_argument("--no-browser", action="store_true", help="start the server without opening a browser")
    lab.add_argument("--port", type=bounded_int("--port", 1, 65535, " (a TCP port)"), default=None, help="port for JupyterLab (default: its own, 8888 or next free)")
    lab.add_argument("jupyter_args", nargs="*", help="anything after -- goes to `jupyter lab` as is")

    return p


N = bounded_int("-n", 1, MAX_N, " (the number of examples)")
SEED = bounded_int("--seed", 0, 2**63 - 1)


def cmd_run(args) -> int:
    import explorer as ex

    row = ex.run(args.model, args.task, technique_of(args.technique or [], args.knob), n=args.n, seed=args.seed)
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


def cmd_models(args) -> int:
    import polars as pl

    from explorer.models import catalog

    with pl.Config(tbl_rows=50, tbl_width_chars=200, fmt_str_lengths=100):
        print(pl.DataFrame(catalog()))
    return 0


def cmd_zoo_train(args) -> int:
    if "smollm2-drafts" in (args.names or []):  # the two SmolLM2 drafts (explorer/zoo/distill.py)
        from explorer.zoo import distill

        distill.main(args.out)
        args.names = [n for n in args.names if n != "smollm2-drafts"]
        if not args.names:
            return 0
    from pathlib import Path

    from explorer.zoo import train_family

    if args.text is not None and not Path(args.text).expanduser().is_dir():
        raise FileNotFoundError(f"--text {args.text!r} is not a folder; give a folder of .txt files (or leave "
                                "--text out for the shipped corpus)")
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


def cmd_sweep(args) -> int:
    from explorer.store import Store
    from explorer.sweep import DEFAULT_SPEC, from_spec, load_spec, plan, sweep

    kwargs = from_spec(load_spec(args.file) if args.file else DEFAULT_SPEC)
    kwargs |= {k: v for k, v in (("n", args.n), ("seed", args.seed)) if v is not None}
    if args.dry_run:  # reads only: a store that does not exist yet has nothing stored, and is not made
        jobs = plan(**kwargs)
        try:
            store = Store(args.store, create=False)
            have, where = store.hashes(), store.path
        except FileNotFoundError:
            have, where = set(), f"{args.store or 'the default folder'} (not created yet)"
        for job in jobs:
            print(f"{'stored ' if job.config_hash in have else 'missing'}  {job.config_hash}  {job.model}  "
                  f"{job.task}  {job.technique!r}")
        print(f"store: {where}")
        return 0
    plan(**kwargs)  # every model, task and knob checked before the store folder is made
    from explorer.executors import get as get_executor

    get_executor(args.executor, address=args.address, workers=args.workers)  # and the executor, the address
    store = Store(args.store)
    store.check_writable()  # before any model loads: a run that cannot be stored is not started
    rows = sweep(**kwargs, store=store, executor=args.executor, address=args.address, workers=args.workers,
                 remeasure=args.remeasure)
    print(f"{rows.height} rows of this sweep in {store.path}")
    return 0


def assignments(items: list[str]) -> dict:
    """NAME=VALUE pairs; a value is read as JSON (4, 0.5, true, null), else kept as text."""
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"{item!r}; give NAME=VALUE, e.g. bits=4")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def technique_of(names: list[str], knobs: list[str]):
    """The technique(s) named, each given the knobs that are its fields (composed when several)."""
    import dataclasses

    from explorer.compose import compose
    from explorer.techniques import Baseline, techniques

    values = assignments(knobs)
    classes = [techniques.get(n) for n in names]
    fields = [{f.name for f in dataclasses.fields(c)} for c in classes]
    unknown = sorted(set(values) - set().union(*fields)) if classes else sorted(values)
    if unknown:
        raise ValueError(f"--knob {', '.join(unknown)}: not a knob of {', '.join(names) or 'the baseline'}; "
                         f"knobs: {', '.join(sorted(set().union(*fields))) or 'none'}")
    parts = [c(**{k: v for k, v in values.items() if k in f}) for c, f in zip(classes, fields)]
    return compose(*parts) if parts else Baseline()


def cmd_techniques(args) -> int:
    from explorer.techniques import declarations

    for d in declarations():
        print(f"{d.name}: {d.summary}")
        print(f"    roles: {', '.join(sorted(d.roles)) or 'none (the model as loaded)'}; default cost axis: {d.axis}")
        for k in (*d.knobs, *d.filters):
            print(f"    {'filter' if k in d.filters else 'knob'} {k.describe()}")
    return 0


def cmd_frontier(args) -> int:
    import polars as pl

    from explorer.frontier import chart
    from explorer.frontier import points as frontier_points
    from explorer.store import Store

    if args.out and not args.out.endswith((".html", ".png", ".svg")):
        raise ValueError(f"--out {args.out!r}; the chart is written as .html, .png or .svg")
    if args.out:
        writable_target(args.out)
    store = Store(args.store, create=False)
    df = store.frame()
    if args.task is not None and "task" in df.columns:
        df = df.filter(pl.col("task") == args.task)
    if df.height == 0:
        raise ValueError(f"no stored rows{f' for task {args.task!r}' if args.task else ''} in {store.path}; "
                         "run `explorer sweep` first")
    by = args.by or None
    maximize = False if args.lower_is_better else None  # None: the quality's direction from explorer.metrics
    filters = assignments(args.at)
    points = frontier_points(df, cost=args.cost, quality=args.quality, by=by, maximize=maximize, filters=filters,
                             keep="all" if args.all else "frontier")
    # One readable column: the technique and the knobs whose values differ between the points shown.
    varied = [c for c in points.columns if c.startswith("knob_") and points[c].drop_nulls().n_unique() > 1]
    label = pl.concat_str([pl.col("technique"), *[pl.when(pl.col(c).is_not_null()).then(
        pl.lit(f" {c.removeprefix('knob_')}=") + pl.col(c).cast(pl.String)) for c in varied]], ignore_nulls=True)
    points = points.with_columns(label.alias("config"))
    cols = ["model", "task", "config", args.cost, args.quality, f"{args.quality}_lo", f"{args.quality}_hi",
            "frontier_status"]
    with pl.Config(tbl_rows=200, tbl_cols=30, tbl_width_chars=200):
        print(points.select([c for c in dict.fromkeys(cols) if c in points.columns]))
    if args.out:
        chart(df, cost=args.cost, quality=args.quality, by=by, maximize=maximize, filters=filters).save(args.out)
        print(f"wrote {args.out}")
    print(f"store: {store.path}")
    return 0


def cmd_export(args) -> int:
    import polars as pl

    from explorer.store import Store

    if not args.out.endswith((".parquet", ".csv")):
        raise ValueError(f"export to {args.out!r}; give a .parquet or .csv file name")
    writable_target(args.out)
    store = Store(args.store, create=False)
    df = store.frame()
    if df.height == 0:
        raise ValueError(f"no stored rows in {store.path}; nothing to export (check --store, or run `explorer sweep`)")
    if args.out.endswith(".parquet"):
        df.write_parquet(args.out)
    elif args.out.endswith(".csv"):
        nested = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Struct, pl.Array))]
        if nested:  # CSV holds flat cells only; parquet keeps these
            print(f"export: leaving out nested columns {', '.join(nested)} (export .parquet to keep them)",
                  file=sys.stderr)
        df.drop(nested).write_csv(args.out)
    else:
        raise ValueError(f"export to {args.out!r}; give a .parquet or .csv file name")
    print(f"wrote {df.height} rows to {args.out} from {store.path}")
    return 0


def writable_target(out: str) -> None:
    """Refuse, before any work, a file that cannot be written: a missing or read-only folder."""
    import os
    from pathlib import Path

    target = Path(out).expanduser()
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise ValueError(f"{out!r} is a folder; give a file name to write")
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {str(folder)!r} for {out!r} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise PermissionError(f"cannot write {out!r}: {str(folder)!r} is not writable; write elsewhere")


def cmd_lab(args) -> int:
    import os
    from pathlib import Path

    # The notebooks live beside the package in a source checkout (and in an editable install).
    root = Path(__file__).resolve().parent.parent
    tour = root / "notebooks" / "tour.ipynb"
    if not tour.is_file():
        raise FileNotFoundError(f"no workshop notebooks at {tour.parent}; `explorer lab` runs from a source "
                                "checkout of the project (git clone, then pip install -e '.[lab]')")
    # default_url, not a file argument: the printed URL (what --no-browser users open) is then the tour's too.
    argv = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={root}",
            "--LabApp.default_url=/lab/tree/notebooks/tour.ipynb"]
    argv += ["--no-browser"] * args.no_browser + [f"--port={args.port}"] * (args.port is not None)
    # JupyterLab refuses root without this; a workshop container or a CI box often is root.
    argv += ["--allow-root"] * (hasattr(os, "geteuid") and os.geteuid() == 0)
    # Replace this process: Ctrl-C and a terminate signal reach JupyterLab itself, and no server outlives us.
    os.chdir(root)
    os.execv(sys.executable, argv + args.jupyter_args)


COMMANDS = {("run", None): cmd_run, ("zoo", "list"): cmd_zoo_list, ("models", None): cmd_models, ("zoo", "train"): cmd_zoo_train,
            ("table", None): cmd_table, ("techniques", None): cmd_techniques, ("sweep", None): cmd_sweep, ("frontier", None): cmd_frontier,
            ("export", None): cmd_export, ("lab", None): cmd_lab}

if __name__ == "__main__":
    raise SystemExit(main())
