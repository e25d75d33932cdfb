"""What a model folder holds, read without loading it: for checks at DAG build (no torch, no weights read).

    folder_problem("models/my-llama")      # None, or "has no config.json" / "has no tokenizer" / ...
    module_names(config, "tiny")           # (module names, where they were read), or (None, why not)
    unmatched_targets(["c_attn"], names)   # ["c_attn"]: LoRA targets that match no module

Module names come from the weights' own key names where the folder (or the Hugging Face cache) has them: a
safetensors file's header (its first bytes) or a sharded model's index. Where only config.json is there,
its `model_type` maps to the names that family's transformers class uses; the built-in tiny model is a
Llama. PEFT matches a LoRA target as a whole module name or a name's last dotted parts
(`q_proj` matches `model.layers.0.self_attn.q_proj`), a string as a regular expression over whole names.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

CONFIG_FILES = ("config.json", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer.tiktoken")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt")


def _layer(attention: tuple, mlp: tuple, attn="self_attn", ffn="mlp", prefix="model.layers.0", extra=()) -> tuple:
    return (*(f"{prefix}.{attn}.{n}" for n in attention), *(f"{prefix}.{ffn}.{n}" for n in mlp), *extra)


_LLAMA = _layer(("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj"),
                extra=("model.embed_tokens", "lm_head"))
# transformers' module names by config.json's model_type (one layer stands for all).
FAMILIES = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "granite",
                     "starcoder2_llama"), _LLAMA),
    "phi3": _layer(("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj"), extra=("model.embed_tokens", "lm_head")),
    "gpt2": _layer(("c_attn", "c_proj"), ("c_fc", "c_proj"), attn="attn", prefix="transformer.h.0",
                   extra=("transformer.wte", "lm_head")),
    "gpt_neox": _layer(("query_key_value", "dense"), ("dense_h_to_4h", "dense_4h_to_h"), attn="attention",
                       prefix="gpt_neox.layers.0", extra=("gpt_neox.embed_in", "embed_out")),
}


def folder_problem(path: str | os.PathLike) -> str | None:
    """What keeps a folder from loading as a model with its tokenizer (None when nothing does)."""
    folder = Path(path)
    if not folder.is_dir():
        return "is not a folder (a model folder holds config.json, a tokenizer and weights)"
    if not any((folder / name).is_file() for name in CONFIG_FILES):
        return "has no config.json (expected a folder as save_pretrained writes it: config.json, tokenizer, weights)"
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return (f"has no tokenizer (none of {', '.join(TOKENIZER_FILES)}; save it beside the model: "
                f"tokenizer.save_pretrained(folder))")
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        return "has no weights (*.safetensors or *.bin)"
    return None


def safetensors_names(path: str | os.PathLike) -> list[str]:
    """The tensor names in a safetensors file's header: its first 8 bytes give the header's length."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: too short for a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > 100 << 20:
            raise ValueError(f"{path}: header of {size} bytes is not a safetensors header")
        header = json.loads(f.read(size))
    return [name for name in header if name != "__metadata__"]


def _modules(tensor_names) -> list[str]:
    return sorted({name.rsplit(".", 1)[0] for name in tensor_names if "." in name})


def names_in(folder: str | os.PathLike | None, fetch=None) -> tuple[list[str] | None, str]:
    """Module names of the model in `folder` (or of what `fetch(filename)` finds: a cache lookup)."""
    def find(name):
        if fetch is not None:
            return fetch(name)
        path = Path(folder, name)
        return path if path.is_file() else None

    index = find("model.safetensors.index.json")
    if index:
        return _modules(json.loads(Path(index).read_text()).get("weight_map", {})), "its weights' index"
    single = find("model.safetensors")
    if single:
        try:
            return _modules(safetensors_names(single)), "its weights' header"
        except (OSError, ValueError):
            pass
    config = find("config.json")
    if config:
        model_type = json.loads(Path(config).read_text()).get("model_type")
        if model_type in FAMILIES:
            return list(FAMILIES[model_type]), f"config.json: model_type {model_type}"
        return None, f"model_type {model_type!r} has no known module names"
    return None, "no config.json or weights to read"


def module_names(model_spec: dict, results_dir: str | None = None) -> tuple[list[str] | None, str]:
    """Module names of a config's model (`models.<key>`), or (None, why they cannot be read here)."""
    source = model_spec["source"]
    if source == "tiny":
        return list(_LLAMA), "the built-in tiny model (a Llama)"
    if source == "local":
        path = Path(os.path.expanduser(model_spec["path"]))
        if results_dir and path.resolve().is_relative_to(Path(results_dir).resolve()):
            return None, "built by this workflow (a rehearsal's stand-in)"
        return names_in(path) if path.is_dir() else (None, "no folder")
    from huggingface_hub import try_to_load_from_cache

    def cached(name):
        found = try_to_load_from_cache(model_spec["repo_id"], name, revision=model_spec.get("revision"))
        return found if isinstance(found, str) else None

    return names_in(None, fetch=cached)


def unmatched_targets(targets, names: list[str]) -> list[str]:
    """LoRA `target_modules` that match none of `names`, as PEFT matches them; a regex (one string) that
    matches none is returned whole; "all-linear" always matches."""
    if targets is None or targets == "all-linear":
        return []
    if isinstance(targets, str):
        return [] if any(re.fullmatch(targets, name) for name in names) else [targets]
    return [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]


def short_names(names: list[str]) -> list[str]:
    """The distinct last parts of module names (`q_proj`, ...): what a target list usually names."""
    return sorted({name.rsplit(".", 1)[-1] for name in names if not name.rsplit(".", 1)[-1].isdigit()})
