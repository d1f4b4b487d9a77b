"""Which weights a model name means right now: (name, fingerprint), without loading the model.

A row's key (`explorer.runs.config_hash`) holds the fingerprint of every model a
configuration runs, target and draft alike, so changing a folder's weights
(retraining the zoo, editing a draft) changes the key and a resumed sweep runs it
again instead of keeping a stale row. A fingerprint is what `explorer.load(name)
.facts.revision` reports: the sha256 prefix of `model.safetensors`, or the Hub
commit. Hashing is cached per (folder, file mtime, file size), so asking again
costs one `stat`, and a file changed in place is hashed again.
"""
from __future__ import annotations

from pathlib import Path

_seen: dict[tuple, str] = {}  # stamp -> revision (not the name: one folder has many names)


def stamp(name: str) -> tuple:
    """What identifies the weights on disk for a cache: (folder, mtime_ns, size) of model.safetensors,
    or (where,) for a Hub id. Raises ModelNotFound for a name that is not a model."""
    from explorer.models import ModelNotFound, resolve

    if not isinstance(name, str) or not name.strip():
        raise ModelNotFound(f"model {name!r}; give a zoo name, a folder or a Hugging Face id")
    where, _ = resolve(name)
    # A GGUF file is its own weights file (explorer.gguf_models keys its conversion by it).
    weights = Path(where) if where.lower().endswith(".gguf") else Path(where) / "model.safetensors"
    try:
        st = weights.stat()
    except OSError:
        return (where,)
    return (where, st.st_mtime_ns, st.st_size)


def identity(name: str) -> tuple[str, str]:
    """(name, weights fingerprint) exactly as `explorer.load(name).facts` would report, without loading."""
    from explorer.models import ModelNotFound, revision_of

    key = stamp(name)
    if key not in _seen:
        where = key[0]
        if len(key) > 1:
            revision = revision_of(where, None)
        else:  # a Hub id (or a folder without a single weights file): the commit hash is in the config
            from types import SimpleNamespace

            if Path(where).is_dir() and not (Path(where) / "config.json").is_file():
                raise ModelNotFound(f"model folder {where!r} has no config.json; a model folder holds "
                                    "config.json, model.safetensors and the tokenizer files")
            try:
                from transformers import AutoConfig

                config = AutoConfig.from_pretrained(where)
            except (OSError, ValueError) as err:
                raise ModelNotFound(
                    f"model {name!r} is not a zoo name, not a folder here, and could not be read from the "
                    f"Hugging Face Hub (offline, or no such model id there: {type(err).__name__}). Use a zoo "
                    "model (explorer zoo list), a local folder, or fill the Hugging Face cache on a machine "
                    "with a network and set HF_HUB_OFFLINE=1 here") from None
            revision = revision_of(where, SimpleNamespace(config=config))
        _seen[key] = revision
    return (name, _seen[key])


def fingerprint(name: str) -> str:
    """The weights fingerprint of `name` (see `identity`)."""
    return identity(name)[1]
