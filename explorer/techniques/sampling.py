"""Repeated sampling: draw n samples per problem once, read every k <= n from them.

Coverage rises log-linearly with samples ("Large Language Monkeys", Brown et al.
2024), majority vote plateaus (self-consistency, Wang et al. 2023) and an
imperfect verifier caps best-of-k ("Inference Scaling fLaws", Stroebl et al.
2024). All three come from the same stored samples, so a k-slider never runs the
model: `curves(row)` recomputes them for any k <= n (explorer/aggregate.py has
the exact subset expectations).

A row keeps every sample in its `samples` column (one record per problem: the
parsed answers, verdicts, summed log-probabilities and token counts of its n
samples); `Samples.of(row)` reads it back and `Samples.frame()` gives one polars
row per sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from explorer import aggregate as agg
from explorer import evaluation
from explorer.techniques.base import AGGREGATES, Knob, Technique, technique
from explorer.cost import flops_per_token, timed
from explorer import generate as generation
from explorer.generate import example_seed, positions, samplers
from explorer.stats import bootstrap_mean

AGGREGATORS = ("pass", "majority", "best_logprob", "best_verifier")
# Rows per generate call: throughput on CPU is flat from about 64 rows up (zoo-s, zoo-m),
# and 256 rows of a zoo model's KV cache stay in the tens of megabytes.
ROWS_PER_CALL = 256


@dataclass(frozen=True, eq=False)
class Samples:
    """Every sample of a run, problems by rows, draws by columns."""
    answers: list[list[str]]  # parsed answer of each sample (what the verifier judged)
    correct: np.ndarray  # (problems, n) verdicts
    logprob: np.ndarray  # (problems, n) summed log-probability under the model, incl. end-of-sequence
    tokens: np.ndarray  # (problems, n) tokens generated, incl. end-of-sequence
    difficulty: np.ndarray  # (problems,)

    @property
    def n(self) -> int:
        return self.correct.shape[1]

    @property
    def mean_logprob(self) -> np.ndarray:
        # Mean, not sum: a summed log-probability would favour short (often truncated) answers.
        return self.logprob / np.maximum(self.tokens, 1)

    def records(self) -> list[dict[str, Any]]:
        """One plain record per problem: the row's `samples` column (nests in polars and parquet)."""
        return [{"difficulty": int(d), "answer": list(a), "correct": c.tolist(), "logprob": lp.tolist(),
                 "tokens": t.tolist()}
                for d, a, c, lp, t in zip(self.difficulty, self.answers, self.correct, self.logprob, self.tokens)]

    def frame(self):
        """One polars row per sample: problem, sample, difficulty, answer, correct, logprob, tokens."""
        import polars as pl

        p, n = self.correct.shape
        return pl.DataFrame({
            "problem": np.repeat(np.arange(p), n), "sample": np.tile(np.arange(n), p),
            "difficulty": np.repeat(self.difficulty, n), "answer": [a for row in self.answers for a in row],
            "correct": self.correct.ravel(), "logprob": self.logprob.ravel(), "tokens": self.tokens.ravel(),
        })

    @classmethod
    def of(cls, source) -> "Samples":
        """Samples from a run row, its `samples` records, or a `frame()`."""
        if isinstance(source, Samples):
            return source
        if isinstance(source, Mapping):
            if source.get("samples") is None:
                raise ValueError("this row has no 'samples' column; it was not made by explorer.Sampling")
            source = source["samples"]
        if hasattr(source, "partition_by"):  # a polars frame from frame()
            source = [{"difficulty": g["difficulty"][0], "answer": g["answer"].to_list(),
                       "correct": g["correct"].to_list(), "logprob": g["logprob"].to_list(),
                       "tokens": g["tokens"].to_list()}
                      for g in source.sort("problem", "sample").partition_by("problem", maintain_order=True)]
        records = list(source)
        if not records or len({len(r["correct"]) for r in records}) != 1:
            raise ValueError("samples must hold at least one problem, each with the same number of samples")
        return cls([list(r["answer"]) for r in records],
                   np.array([r["correct"] for r in records], dtype=bool),
                   np.array([r["logprob"] for r in records], dtype=float),
                   np.array([r["tokens"] for r in records], dtype=int),
                   np.array([r["difficulty"] for r in records], dtype=int))


def per_problem(samples: Samples, ks, *, fpr: float, fnr: float, seed: int) -> dict[str, np.ndarray]:
    """Each aggregator's value per problem and k: arrays of shape (problems, len(ks))."""
    accepted = agg.simulate_verifier(samples.correct, fpr, fnr, seed)
    return {
        "pass": agg.pass_curve(samples.correct, ks),
        "majority": agg.majority_curve(samples.answers, samples.correct, ks),
        "best_logprob": agg.best_of_curve(samples.correct, samples.mean_logprob, ks),
        "best_verifier": agg.best_of_curve(samples.correct, samples.mean_logprob, ks, first=accepted),
    }


def curves(source, ks=None, *, fpr: float | None = None, fnr: float | None = None,
           seed: int | None = None):
    """Accuracy of every aggregator at each k <= n, from stored samples only (no generation).

    `source` is a Sampling row (its verifier rates and seed are the defaults), its
    `samples` records, a `Samples` or a `Samples.frame()`. Returns a polars frame,
    one row per k, with `<aggregator>_at_k` columns and the cost of drawing k per problem.
    """
    import polars as pl

    samples = Samples.of(source)
    row = source if isinstance(source, Mapping) else {}
    fpr = row.get("knob_verifier_fpr", Sampling.verifier_fpr) if fpr is None else fpr
    fnr = row.get("knob_verifier_fnr", Sampling.verifier_fnr) if fnr is None else fnr
    seed = row.get("seed", 0) if seed is None else seed
    ks = agg.check_ks(ks, samples.n)
    values = per_problem(samples, ks, fpr=fpr, fnr=fnr, seed=seed)
    frame = {"k": ks, **{f"{a}_at_k": v.mean(0) for a, v in values.items()}}
    frame["tokens_generated"] = [k * samples.tokens.sum() / samples.n for k in ks]
    if "flops_per_token_analytic" in row:
        frame["flops_per_problem_analytic"] = [flops_per_problem(row, samples, k) for k in ks]
    return pl.DataFrame(frame)


def flops_per_problem(row: Mapping, samples: Samples, k: int) -> float:
    # Each sample re-reads its prompt: the batch repeats the prompt rather than sharing its cache.
    return float(k * (row["prompt_tokens_mean"] + samples.tokens.mean()) * row["flops_per_token_analytic"])


def k_grid(n: int) -> list[int]:
    """Powers of two below n, and n: the k columns a row carries."""
    return [2**i for i in range(n.bit_length()) if 2**i < n] + [n]


@technique(
    "sampling", roles=[AGGREGATES], axis="flops_per_problem_analytic", view="widgets.tokens:CurveView",
    knobs=[Knob("n", "samples", 16, range=(1, 64), options=(2, 4, 8, 16, 32, 64), name="samples",
                unit="per problem")],
    # k <= n only re-reads the stored samples: no run (read_at_k).
    # The judge too: every aggregator is computed from the same samples.
    filters=[Knob("k", "k", 16, range=(1, 64), step=1, upto="samples", unit="samples"),
             Knob("aggregator", "judge", None, options=(("as run", None), ("pass@k (exact checker)", "pass"),
                                                        ("majority vote", "majority"),
                                                        ("best of k by log-prob", "best_logprob"),
                                                        ("best of k, imperfect checker", "best_verifier")))],
    read_at=lambda df, k=None, aggregator=None: read_at_k(df, k, aggregator),
    # One sample count is enough: a Sampling row carries every k <= n, read from its stored samples.
    sweep=[{"n": [8], "aggregator": "majority"}],
    # It draws through a decoder at its own temperature: a stacked decoder takes it.
    hands_down=["temperature"],
)
@dataclass(frozen=True)
class Sampling(Technique):
    """Draw `n` samples per problem; report pass@k, majority@k and best-of-k for k <= n.

    The headline `accuracy` is `aggregator` at `k` (n when not given); the row also
    carries every aggregator on the k grid 1, 2, 4, ..., n and the samples themselves.
    Aggregators are exact expectations over k-subsets of the n samples (no resampling
    noise); a majority tie is split evenly, equal best-of-k scores go to the earlier
    draw (see explorer/aggregate.py). The verifier's errors are drawn with the run's seed.
    """

    name: ClassVar[str] = "sampling"
    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    aggregator: str = "majority"
    k: int | None = None
    verifier_fpr: float = 0.1  # simulated verifier: P(accept | wrong)
    verifier_fnr: float = 0.1  # P(reject | right)

    curves: ClassVar = staticmethod(curves)

    def __post_init__(self):
        def bad(field: str, valid: str):
            raise ValueError(f"Sampling.{field}={getattr(self, field)!r}; valid: {valid}")

        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= agg.MAX_SAMPLES:
            bad("n", f"an integer 1..{agg.MAX_SAMPLES} (samples per problem)")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 <= self.temperature < float("inf"):
            bad("temperature", "a finite number >= 0 (0 is greedy)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", "in (0, 1]")
        if self.aggregator not in AGGREGATORS:
            bad("aggregator", ", ".join(AGGREGATORS))
        if self.k is None:
            object.__setattr__(self, "k", self.n)  # so Sampling(n=8) == Sampling(n=8, k=8)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.n:
            bad("k", f"an integer 1..n={self.n}")
        for field in ("verifier_fpr", "verifier_fnr"):
            v = getattr(self, field)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                bad(field, "a rate in [0, 1]")

    def check_decoder(self, decoder: Technique) -> None:
        """Refuse a decoder that cannot draw this technique's samples."""
        t = getattr(decoder, "temperature", None)
        if t is None:
            raise ValueError(f"compose: {decoder.name} has no sampling temperature, so sampling cannot draw "
                             "its samples through it")
        if t != self.temperature or not t > 0:
            raise ValueError(f"compose: sampling draws at temperature {self.temperature} but {decoder.name} "
                             f"decodes at temperature {t}; give both the same temperature above 0 "
                             f"(e.g. {type(decoder).__name__}(..., temperature={self.temperature or 1.0}))")
        if self.top_p < 1:
            raise ValueError(f"compose: Sampling.top_p={self.top_p} truncates sampling's own loop only; "
                             f"{decoder.name} samples from the full distribution: use top_p=1.0")

    def evaluate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int,
                 decoder: Technique | None = None) -> dict[str, Any]:
        """Draw `n` samples per problem, by the model's own sampling or, composed with a decoder
        (majority vote over early-exit samples), through that decoder at this temperature."""

        # One generate call per group of whole problems, each prompt repeated n times. Every
        # sample draws from its own generator, seeded from (seed, problem, sample), so the
        # samples depend neither on the group size nor on run's batch_size.
        per_call = max(1, ROWS_PER_CALL // self.n)
        groups = [examples[i : i + per_call] for i in range(0, len(examples), per_call)]
        (texts, logprob, tokens, gens), wall, _ = timed(lambda: self.draw(model, task, groups, seed, decoder), repeats)
        # The answer as the task's verifier reads it (a written reply's last number, say): what a vote counts.
        answers = [[task.parse(t, e) or "" for t in texts[i * self.n : (i + 1) * self.n]]
                   for i, e in enumerate(examples)]
        correct = np.array([[task.verify(e, t) for t in texts[i * self.n : (i + 1) * self.n]]
                            for i, e in enumerate(examples)], dtype=bool)
        samples = Samples(answers, correct, logprob.reshape(correct.shape), tokens.reshape(correct.shape),
                          np.array([e.difficulty for e in examples]))
        prompt_len = float(np.mean([len(model.tokenizer(e.prompt)["input_ids"]) for e in examples]))
        row: dict[str, Any] = {
            "samples_drawn": int(correct.size), "sample_accuracy": float(correct.mean()),
            "generate_calls": len(groups), "problems_per_call": per_call,
            "prompt_tokens_mean": prompt_len,
            "flops_per_token_analytic": float(flops_per_token(model.hf.config, prompt_len + tokens.mean() / 2)),
            "tokens_generated": int(tokens.sum()), "wall_s": wall,
            "wall_s_per_token": wall / max(int(tokens.sum()), 1),
            "decode_path": evaluation.decode_path(gens),
        }
        if decoder is not None:  # its analytic FLOPs (layers skipped) replace the full model's
            row |= decoder.columns(model, gens)
        return self.headline(samples, seed, row) | row | {"samples": samples.records()}

    def headline(self, samples: Samples, seed: int, row: dict[str, Any]) -> dict[str, Any]:
        """Accuracy at (aggregator, k) with a bootstrap interval, and every aggregator on the k grid."""
        ks = sorted(set(k_grid(self.n)) | {self.k})
        values = per_problem(samples, ks, fpr=self.verifier_fpr, fnr=self.verifier_fnr, seed=seed)
        head = values[self.aggregator][:, ks.index(self.k)]
        # Bootstrap, not Wilson: a per-problem expectation over subsets is not a 0/1 count.
        lo, hi = bootstrap_mean(head, seed=seed)
        out: dict[str, Any] = {"accuracy": float(head.mean()), "accuracy_lo": lo, "accuracy_hi": hi,
                               "interval": "bootstrap95"}
        for d in sorted(set(samples.difficulty.tolist())):
            out[f"accuracy_d{d}"] = float(head[samples.difficulty == d].mean())
        for j, k in enumerate(ks):
            out |= {f"{a}_at_{k}": float(v[:, j].mean()) for a, v in values.items()}
            out[f"tokens_generated_at_{k}"] = k * int(samples.tokens.sum()) / self.n
            out[f"flops_per_problem_at_{k}_analytic"] = flops_per_problem(row, samples, k)
        return out

    def draw(self, model, task, groups, seed: int, decoder: Technique | None = None
             ) -> tuple[list[str], np.ndarray, np.ndarray, list]:
        """All samples: texts, model log-probabilities and token counts, in problem-major order,
        and the generations they came from."""

        texts, logprob, tokens, gens = [], [], [], []
        first = 0  # index of the group's first problem in the run
        for group in groups:
            prompts = [e.prompt for e in group for _ in range(self.n)]
            seeds = [example_seed(seed, first + p, j) for p in range(len(group)) for j in range(self.n)]
            first += len(group)
            if decoder is not None:  # the decoder seeds its own sampler, one seed per sample
                g = decoder.generate(model, prompts, max_new_tokens=task.max_new_tokens, seed=seeds)
            else:
                g = generation.generate(model.hf, model.tokenizer, prompts, max_new_tokens=task.max_new_tokens,
                                        temperature=self.temperature, top_p=self.top_p, generator=samplers(seeds))
            gens.append(g)
            texts += g.texts
            # A row that stopped early also decoded its end-of-sequence token.
            tokens += [min(len(t) + 1, task.max_new_tokens) for t in g.tokens]
            # generate scores samples under the tempered, truncated distribution; best-of-k
            # ranks by the model's own probability, so rescore unless the two coincide.
            tempered = self.temperature not in (0, 1) or self.top_p < 1
            logprob += model_logprobs(model, prompts, g.tokens, task.max_new_tokens) if tempered else g.logprobs
        return texts, np.array(logprob), np.array(tokens), gens


def model_logprobs(model, prompts: list[str], tokens: list[list[int]], max_new_tokens: int) -> list[float]:
    """Summed log-probability of each completion (with its end-of-sequence, if it stopped)
    under the untempered model: one teacher-forced forward pass, no decoding."""
    import torch


    tok = model.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    heads = tok(prompts)["input_ids"]
    tails = [t + [eos] if len(t) < max_new_tokens else t for t in tokens]
    width = max(len(h) + len(t) for h, t in zip(heads, tails))
    ids = torch.full((len(heads), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    scored = torch.zeros_like(ids, dtype=torch.bool)  # positions whose token is a completion token
    for i, (h, t) in enumerate(zip(heads, tails)):
        ids[i, width - len(h) - len(t):] = torch.tensor(h + t)
        mask[i, width - len(h) - len(t):] = 1
        scored[i, width - len(t):] = True
    with torch.inference_mode():
        # Completions end every row (left padding), so only the last `tail + 1` positions need the
        # output head: on a 49k-token vocabulary the head over the prompts cost more than the model.
        tail = max(len(t) for t in tails)
        logits = model.hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                          logits_to_keep=tail + 1).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, -tail:, None])[..., 0]
    return (lp * scored[:, -tail:]).double().sum(-1).tolist()


def read_at_k(df, k: int | None, aggregator: str | None = None):
    """`df` with each row that drew samples read at min(k, n) of them, from those stored (no generation).

    `k=None` keeps each row's own k; `aggregator` (one of AGGREGATORS) judges every row's
    samples that way instead of by the aggregator it ran with (`knob_aggregator` says which).

    A Sampling row is measured once with n draws per problem; any k <= n is a subset of
    those draws. The row's `accuracy` (its aggregator at k, with its bootstrap interval),
    `tokens_generated` (so the derived FLOPs per problem) and `knob_k` become the values at k.
    Measured times (`wall_s`) stay those of the n draws that were made. Other rows are untouched.
    """
    import polars as pl

    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k={k!r}; give a sample count of 1 or more")
    if aggregator is not None and aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator={aggregator!r}; valid: {', '.join(AGGREGATORS)}")
    if df.height == 0 or not {"technique", "samples", "knob_n", "config_hash"} <= set(df.columns):
        return df
    # Every row that drew samples: Sampling alone or composed (quantize+sampling, early_exit+sampling).
    rows = df.filter(pl.col("samples").is_not_null() & pl.col("knob_n").is_not_null()).to_dicts()
    if not rows:
        return df
    update = pl.DataFrame([at_k(row, min(k or int(row.get("knob_k") or row["knob_n"]), int(row["knob_n"])), aggregator)
                           for row in rows])
    df = df.with_columns([pl.col(c).cast(update.schema[c]) for c in update.columns[1:] if c in df.columns])
    return df.update(update, on="config_hash")


_at_k: dict[tuple, dict[str, Any]] = {}


def at_k(row: Mapping, k: int, aggregator: str | None = None) -> dict[str, Any]:
    """One Sampling row's headline at k (judged by `aggregator`, else its own), memoized by the
    row's key and what identifies its samples (a live lab stores an estimate on the first
    problems under the same key before the full row replaces it)."""
    key = (row["config_hash"], row.get("n_examples"), row.get("samples_drawn"), row.get("tokens_generated"),
           row.get("created_at"), k, aggregator)
    if key not in _at_k:
        knobs = {f: row[f"knob_{f}"] for f in ("aggregator", "verifier_fpr", "verifier_fnr", "temperature", "top_p")
                 if row.get(f"knob_{f}") is not None}
        if aggregator is not None:
            knobs["aggregator"] = aggregator
        head = Sampling(n=int(row["knob_n"]), k=k, **knobs).headline(Samples.of(row), int(row.get("seed") or 0), row)
        if len(_at_k) > 4096:  # a slider's worth of values for many rows; drop the oldest half
            for old in list(_at_k)[:2048]:
                del _at_k[old]
        _at_k[key] = {"config_hash": row["config_hash"], "accuracy": head["accuracy"],
                      "accuracy_lo": head["accuracy_lo"], "accuracy_hi": head["accuracy_hi"],
                      "tokens_generated": float(head[f"tokens_generated_at_{k}"]), "knob_k": k,
                      "knob_aggregator": knobs.get("aggregator", Sampling.aggregator)}
        if row.get("bytes_moved_per_token_analytic") is not None:  # k samples: k times the reads per problem
            _at_k[key]["bytes_moved_per_problem_analytic"] = (
                row["bytes_moved_per_token_analytic"] * _at_k[key]["tokens_generated"] / row["n_examples"])
    return _at_k[key]
