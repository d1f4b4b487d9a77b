"""Speculative decoding as a technique: the target's answers, sooner, and why.

The row puts the measured speed-up (against the target alone, timed in the same
run, repeats interleaved) beside the one Leviathan et al. predict from the
measured acceptance rate alpha and the measured cost ratio c, so a learner sees
both the effect and its explanation. Leviathan's model assumes a verification
call costs what a one-token call does; `verify_cost_ratio_measured` says how
far that holds. At batch size 1 on a CPU it nearly does (about 1.2-1.4 on the
zoo); at batch size 64 the target is compute-bound, verifying draft_len + 1
tokens per row costs several one-token calls, and speculation slows decoding.
So at batch size > 1 a greedy batch speculates only where its plan's costs, the
draft's measured acceptance and a timed trial of both modes all say it pays, and
decodes plainly (the target alone's own path) otherwise; the row says which ran.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import statistics
import weakref
from typing import Any, ClassVar


from explorer.speculative import (DRAFTS, MAX_DRAFT_LEN, TRIAL_PROMPTS, Draft, LengthPlan, SpecStats, Speculation,
                                  check_knobs, check_pair, measure_costs, plan_lengths, predicted_speedup,
                                  speculative_generate, trial_modes)
from explorer.techniques.base import DECODES, EVALUATES, Knob, Technique, technique
from explorer.cost import flops_per_token, timed
from explorer.fingerprint import stamp
from explorer.generate import encode, example_seed, generate, samplers
from explorer.models import load, Model
from explorer.evaluation import accuracy_columns, evaluate


def load_draft(name: str):
    """The draft model, loaded once per version of its weights (a retrained draft is loaded again)."""
    return _load_draft(name, stamp(name))


@functools.lru_cache(maxsize=4)
def _load_draft(name: str, stamp: tuple):
    return load(name)


# Length plans per target model, by (draft, batch size, draft_len, max_new_tokens): measured once.
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def digest(texts: list[str]) -> str:
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]


def stream(tokenizer, trace: list[dict]) -> list[dict]:
    """A trace's token ids as text, one record per target call, for the token-stream view."""
    def text(ids):
        return [tokenizer.decode([i]) for i in ids]

    return [{"accepted": text(r["accepted"]), "rejected": text(r["rejected"]),
             "bonus": None if r["bonus"] is None else tokenizer.decode([r["bonus"]])} for r in trace]


@technique(
    "speculative", roles=[DECODES, EVALUATES], axis="wall_s_per_token", view="widgets.tokens:SpecStreamView",
    knobs=[Knob("draft", "draft", "zoo-xs", kind="model"),
           Knob("draft_len", "draft length", 4, range=(1, 8), step=1, unit="tokens")],
    sweep=[{"draft": "zoo-xs", "draft_len": [4]}],
)
@dataclasses.dataclass(frozen=True)
class Speculative(Technique):
    """A smaller model of the same tokenizer drafts `draft_len` tokens; the target verifies them.

    `draft`: a model name (zoo name, folder, Hugging Face id), or "prompt_lookup" for the
    model-free draft that copies what followed the latest earlier occurrence of the
    last few tokens (`explorer.speculative.PromptLookup`): no second model at all.

    `adaptive`: None for a fixed draft length, or a threshold in (0, 1) on the
    draft's confidence that its proposals survive (SpecDec++-style); `draft_len`
    then caps each round. `temperature` 0 is greedy; above 0 the output follows
    the target's sampling distribution exactly.

    Greedy at batch size > 1 with a fixed length, each round's draft length is chosen
    from costs measured at that batch size (`explorer.speculative.LengthPlan`), with
    `draft_len` as the cap; where verification is compute-bound, no length pays and
    the batch decodes plainly with the target alone. Where a length does pay on paper,
    the first batch of that size is decoded both ways a few times (a trial): unless
    speculating ran clearly faster (`explorer.speculative.TRIAL_MARGIN`, every pass
    faster), the batch decodes plainly too. The row's `spec_mode` says which ran:
    "speculative", "plain" or "mixed"; `spec_plan` why, with the plan's figures, and
    `spec_trial_gain` the trial's median plain-over-speculative time (NaN: no trial).
    """

    name: ClassVar[str] = "speculative"
    # Its acceptance, calls and mode (speculative or plain) depend on the batch size, so the
    # row's key holds batch_size (explorer.runs.config_hash).
    batch_changes_results: ClassVar[bool] = True
    draft: str = "zoo-xs"
    draft_len: int = 4
    adaptive: float | None = None
    temperature: float = 0.0

    def __post_init__(self):
        if not isinstance(self.draft, str) or not self.draft.strip():
            raise ValueError(f"Speculative.draft={self.draft!r}; give a model name: a zoo name such as "
                             "'zoo-xs', a folder or a Hugging Face id")
        try:
            check_knobs(self.draft_len, self.temperature, 1, self.adaptive)
        except ValueError as err:
            raise ValueError(f"Speculative.{err}") from None

    def models(self) -> list[str]:
        return [] if self.draft in DRAFTS else [self.draft]

    def draft_model(self, target=None):  # target: for a draft made from it (SelfSpeculative)
        """The draft: an explorer Model, or a fresh model-free `Draft` (it keeps per-batch state)."""
        if self.draft in DRAFTS:
            return DRAFTS[self.draft]()
        return load_draft(self.draft)

    def prepare(self, model):
        """The target, checked against the draft; its weight bytes count the draft's too."""
        draft = self.draft_model(model)
        check_pair(model, draft)
        extra = 0 if isinstance(draft, Draft) else draft.facts.weight_bytes
        facts = dataclasses.replace(model.facts, weight_bytes=model.facts.weight_bytes + extra)
        return Model(model.hf, model.tokenizer, facts, {**model.tags, "speculative_draft": self.draft})

    def sampler(self, seed, rows: int):
        """One generator per prompt (seeded per example), or None when greedy."""
        return samplers(seed, rows) if self.temperature > 0 else None

    def plans_lengths(self, rows: int) -> bool:
        """Whether a batch of `rows` prompts chooses its draft lengths from measured costs."""
        return rows > 1 and self.temperature == 0 and self.adaptive is None

    def length_plan(self, model, prompts: list[str], max_new_tokens: int,
                    sample: list[list[str]] | None = None) -> LengthPlan:
        """The plan for this batch size, measured on first use, then kept for this process and this
        target: the costs of each width on `prompts` (`plan_lengths`, a few calls each), the draft's
        acceptance (one speculative call per batch at `draft_len`, if any length could pay at all)
        and, if a length pays at that acceptance, a trial of the batches decoded both ways
        (`explorer.speculative.trial_modes`), which must find speculation clearly faster.
        `sample`: batches of this size to measure acceptance and the trial on (up to TRIAL_PROMPTS
        prompts; default `prompts` alone). One batch of 8 is a thin sample: on zoo-l with zoo-xs
        (addition) the gain of single batches of 8 ran from 0.76x to 1.38x with their acceptance.

        The plan decides how a greedy batch decodes, never what it emits (the output is the
        target's either way, tested); it does decide the row's counts (calls, acceptance,
        `spec_mode`), and the row records it (`spec_plan`, `spec_trial_gain`)."""
        plans = _PLANS.setdefault(model.hf, {})
        key = (self.draft, getattr(self, "exit_layer", None), len(prompts), self.draft_len, max_new_tokens)
        if key not in plans:
            draft = self.draft_model(model)
            enc = model.tokenizer(list(prompts), return_tensors="pt", padding=True)
            plan = plan_lengths(model, draft, enc, max_len=self.draft_len)
            batches = [c for c in sample or () if len(c) == len(prompts)] or [prompts]
            batches = batches[: max(1, TRIAL_PROMPTS // len(prompts))]

            def decode(plan):
                return [self.speculate(model, c, max_new_tokens=max_new_tokens, seed=0, plan=plan) for c in batches]

            if plan.best(1.0) > 0:  # a length pays for a draft the target always agrees with
                # The draft's acceptance on these batches at the fixed draft_len (greedy: the same in
                # every process) is what the plan starts from.
                alpha = SpecStats.total([g.stats for g in decode(None)]).acceptance_rate
                plan = dataclasses.replace(plan, alpha=None if math.isnan(alpha) else alpha)
            if plan.best(plan.prior) > 0:
                plan = dataclasses.replace(plan, trial=trial_modes(
                    lambda: [self.plainly(model, c, max_new_tokens=max_new_tokens) for c in batches],
                    lambda: decode(plan)))
            plans[key] = plan
        return plans[key]

    def generate(self, model, prompts: list[str], *, max_new_tokens: int, seed: int):
        plan = self.length_plan(model, prompts, max_new_tokens) if self.plans_lengths(len(prompts)) else None
        if plan is not None and not plan.speculates():
            # No length pays at the acceptance the plan starts from, or speculating was not clearly
            # faster on this batch: the whole batch decodes plainly, exactly as the target alone
            # does (the shared loop, nothing encoded or loaded before it).
            out = self.plainly(model, prompts, max_new_tokens=max_new_tokens)
            out.plan = plan
            return out
        return self.speculate(model, prompts, max_new_tokens=max_new_tokens, seed=seed, plan=plan)

    def speculate(self, model, prompts: list[str], *, max_new_tokens: int, seed: int, plan: LengthPlan | None):
        """The speculative loop on this batch (each round's length from `plan`, if any)."""
        enc = encode(model.tokenizer, prompts, model.facts.context - max_new_tokens)
        draft = self.draft_model(model)
        trace: list[dict] = []
        out = speculative_generate(model, draft, enc, draft_len=self.draft_len,
                                   temperature=self.temperature, max_new_tokens=max_new_tokens,
                                   generator=self.sampler(seed, len(prompts)), adaptive=self.adaptive, trace=trace,
                                   plan=plan)
        out.trace = [r for r in trace if r["row"] == 0]  # the first prompt's stream: enough to watch, small to store
        out.plan = plan
        return out

    def plainly(self, model, prompts: list[str], *, max_new_tokens: int) -> Speculation:
        """Greedy decoding with the target alone (the shared loop), counted as plain rounds."""
        from explorer.generate import generate

        gen = generate(model.hf, model.tokenizer, prompts, max_new_tokens=max_new_tokens)
        rounds = gen.steps + 1  # the prompt's call yields the first token
        stats = SpecStats(self.draft_len, target_calls=gen.tokens_generated, tokens=gen.tokens_generated,
                          target_positions=gen.tokens_generated, steps=rounds, plain_steps=rounds)
        first = [{"accepted": [], "rejected": [], "bonus": t} for t in gen.tokens[0]] if gen.tokens else []
        return Speculation(gen.tokens, gen.texts, gen.logprobs, gen.tokens_generated, gen.steps, stats,
                           [dict(r, row=0) for r in first], decode_path=getattr(gen, "decode_path", ""))

    def target_alone(self, model, prompts: list[str], *, max_new_tokens: int, seed: int):
        return generate(model.hf, model.tokenizer, prompts, max_new_tokens=max_new_tokens,
                        temperature=self.temperature, generator=self.sampler(seed, len(prompts)))

    def columns(self, model, generations: list) -> dict[str, Any]:
        stats = SpecStats.total([g.stats for g in generations])
        plan = getattr(generations[0], "plan", None)
        return stats.columns() | {"output_digest": digest([t for g in generations for t in g.texts]),
                                  "spec_trace": stream(model.tokenizer, generations[0].trace or []),
                                  "spec_plan": plan.describe() if plan is not None else None,
                                  "spec_trial_gain": plan.trial.gain if plan is not None and plan.trial else float("nan")}

    def estimate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
        """The shared evaluation alone (the lab's first estimate): the target-alone timing and the
        cost ratios (about a second of fixed cost, whatever the number of problems) come with the full run."""
        self.measure_plan(model, [[e.prompt for e in examples[:batch_size]]], task.max_new_tokens)
        row = evaluate(self, model, task, examples, seed=seed, repeats=repeats, batch_size=batch_size)
        row.pop("output_digest")
        return row

    def measure_plan(self, model, batches: list[list[str]], max_new_tokens: int) -> None:
        """Measure the length plan of the first batch's size before anything is timed (once per batch
        size), on the batches of that size."""
        if self.plans_lengths(len(batches[0])):
            self.length_plan(model, batches[0], max_new_tokens, sample=batches)

    def evaluate(self, model, task, examples, *, seed: int, repeats: int, batch_size: int) -> dict[str, Any]:
        """The shared evaluation, with the target alone timed between its repeats."""
        prompts = [e.prompt for e in examples]
        chunks = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]

        def alone():  # seeded per example, as the shared evaluation is
            return [self.target_alone(model, c, max_new_tokens=task.max_new_tokens,
                                      seed=[example_seed(seed, i * batch_size + j) for j in range(len(c))])
                    for i, c in enumerate(chunks)]

        self.measure_plan(model, chunks, task.max_new_tokens)
        rows, walls_alone = [], []
        for _ in range(repeats):  # interleaved, so drift in machine load hits both sides alike
            rows.append(evaluate(self, model, task, examples, seed=seed, repeats=1, batch_size=batch_size))
            base, wall, _ = timed(alone, 1)
            walls_alone.append(wall)
        row = rows[0]
        row["wall_s"] = statistics.median(r["wall_s"] for r in rows)
        row["wall_s_per_token"] = row["wall_s"] / max(row["tokens_generated"], 1)
        texts = [t for g in base for t in g.texts]
        alone_acc = accuracy_columns(examples, [task.verify(e, t) for e, t in zip(examples, texts)])
        row["accuracy_target_alone"] = alone_acc["accuracy"]
        row["outputs_match_target_alone"] = row.pop("output_digest") == digest(texts)
        row["wall_s_target_alone"] = statistics.median(walls_alone)
        row["speedup_measured"] = row["wall_s_target_alone"] / row["wall_s"]

        draft = self.draft_model(model)
        free = isinstance(draft, Draft)  # model-free: no forward pass, cost ratio 0
        row["draft_kind"] = draft.kind if free else "model"
        enc = model.tokenizer(chunks[0], return_tensors="pt", padding=True)
        # Two blocks of each kind (16 calls timed), not the benchmark's four: a row's c and v are context
        # for its speed-up, and at batch 64 each block is seconds of a live run's wait in the lab.
        costs = measure_costs(model, None if free else draft, enc, draft_len=self.draft_len, calls=16)
        c = row["cost_ratio_measured"] = costs.cost_ratio
        row["verify_cost_ratio_measured"] = costs.verify_ratio
        # Leviathan's formula assumes a fixed draft length and a verification call that
        # costs one token's forward; it gets NaN for an adaptive row. Beside it, the same
        # cost model fed with the counts this run made and the verification's real cost.
        alpha = row["acceptance_rate"]
        row["speedup_predicted"] = (predicted_speedup(alpha, self.draft_len, c) if self.adaptive is None
                                    else float("nan"))
        # Leviathan's with the verification's measured cost in place of one call's (g c + v, not g c + 1).
        g = self.draft_len
        row["speedup_predicted_verify"] = row["speedup_predicted"] * (g * c + 1) / (g * c + costs.verify_ratio)
        row["speedup_predicted_from_counts"] = row["tokens_per_target_call"] / (
            row["draft_calls"] / row["target_calls"] * c + costs.verify_ratio)

        # Analytic FLOPs per emitted token: every position the target verified (rejected
        # ones too) and every draft forward. More FLOPs than the target alone, less time.
        tokens = max(row["tokens_generated"], 1)
        ctx = sum(len(model.tokenizer(p)["input_ids"]) for p in prompts) / len(prompts) + tokens / len(prompts) / 2
        f_target = flops_per_token(model.hf.config, ctx)
        f_draft = 0.0 if free else flops_per_token(draft.hf.config, ctx)
        row["flops_per_token_analytic_target_alone"] = f_target
        row["flops_per_token_analytic"] = (f_target * row["target_positions"]
                                           + f_draft * row["draft_positions"]) / tokens
        return row


__all__ = ["MAX_DRAFT_LEN", "Speculative", "load_draft"]
