"""Base-model preparation: the built-in tiny model, a local path, or a Hugging Face snapshot.

The built-in source needs no network: a byte-level BPE tokenizer is trained on the toy corpus, a tiny
Llama-style causal LM is initialised from a seed and pre-trained on the same corpus (where harmful
prompts mostly get compliance: an unaligned base that alignment can fix), and both are saved with
`save_pretrained`. Large models are not copied: their output directory holds `model_ref.json`
pointing at the local path or hub snapshot, and `resolve_model_path` follows it.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .shared_grad import SharedGradients

REF_FILE = "model_ref.json"
# Beside an adapter trained on a merged adapter: the stage it was trained on (see _load_causal_lm).
ADAPTER_PARENT = "adapter_parent.json"

# Chat markup of the tiny model. One template for pre-training, alignment, fine-tuning and evaluation,
# so the prompt format never shifts between stages. Assistant turns end in <|end|>, the eos token.
SPECIAL_TOKENS = {"user": "<|user|>", "assistant": "<|assistant|>", "eos": "<|end|>", "pad": "<|pad|>"}
CHAT_TEMPLATE = (
    "{%- for message in messages -%}<|{{ message['role'] }}|>{{ message['content'] }}"
    "{%- if message['role'] == 'assistant' -%}<|end|>{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


@dataclass
class TinyModelConfig:
    """Shape and pre-training schedule of the built-in model (sizes from config.yaml's base_model)."""

    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 128
    pretrain_epochs: float = 15.0
    batch_size: int = 64
    lr: float = 3e-3
    warmup_frac: float = 0.05
    seed: int = 0


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, with the chat markup as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKENS["pad"], SPECIAL_TOKENS["eos"], SPECIAL_TOKENS["user"], SPECIAL_TOKENS["assistant"]],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        additional_special_tokens=[SPECIAL_TOKENS["user"], SPECIAL_TOKENS["assistant"]],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_tiny_model(tokenizer, cfg: TinyModelConfig):
    """A freshly initialised Llama-style causal LM sized by `cfg`, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,  # at this size the embedding is a third of the parameters
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def chat_text(tokenizer, prompt: str, completion: str) -> str:
    """One training example in the model's chat format."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def pretrain(model, tokenizer, records: list[dict], cfg: TinyModelConfig, log=print, workers: int = 1) -> dict:
    """Causal-LM pre-training on (prompt, completion) records; returns loss statistics.

    A plain loop rather than a Trainer: the model is ~1M parameters and per-step overhead dominates.
    The loss covers the whole chat text, so the model also learns the prompt distribution. Each batch's
    gradient is computed over `workers` processes (`shared_grad`); the weights do not depend on how many.
    """
    if not records:
        raise ValueError("pre-training corpus is empty")
    texts = [chat_text(tokenizer, r["prompt"], r["completion"]) for r in records]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    limit = model.config.max_position_embeddings
    too_long = [i for i, x in enumerate(ids) if len(x) > limit]
    if too_long:
        raise ValueError(f"pre-training record {too_long[0]} has {len(ids[too_long[0]])} tokens > {limit}")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    steps = max(1, math.ceil(len(ids) * cfg.pretrain_epochs / cfg.batch_size))
    warmup = max(1, int(cfg.warmup_frac * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    order: list[int] = []
    losses = []
    with SharedGradients(model, workers) as gradients:
        for step in range(steps):
            if len(order) < cfg.batch_size:
                fresh = list(range(len(ids)))
                rng.shuffle(fresh)
                order += fresh
            batch = [ids[i] for i in order[: cfg.batch_size]]
            del order[: cfg.batch_size]
            loss = gradients.loss_backward(batch, tokenizer.pad_token_id)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss)
            if step % 100 == 0 or step == steps - 1:
                log(f"pretrain step {step + 1}/{steps} loss {loss:.4f}")
    model.eval()
    tail = losses[-max(1, steps // 10):]
    return {"steps": steps, "first_loss": losses[0], "final_loss": sum(tail) / len(tail)}


def build_tiny_base_model(records: list[dict], out_dir: str | Path, cfg: TinyModelConfig, log=print,
                          workers: int = 1) -> dict:
    """Train tokenizer + tiny model on the corpus (pre-training over `workers` processes) and save both
    to `out_dir`; returns a summary."""
    texts = [f"{r['prompt']} {r['completion']}" for r in records]
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_tiny_model(tokenizer, cfg)
    stats = pretrain(model, tokenizer, records, cfg, log=log, workers=workers)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {"source": "tiny", "parameters": n_params, "vocab_size": len(tokenizer), **stats}


def snapshot(repo_id: str, revision: str | None) -> dict:
    """Download (or find in the cache, under HF_HUB_OFFLINE=1) a hub model; returns its path and commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = snapshot_download(repo_id=repo_id, revision=revision)
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"hub model {repo_id}@{revision or 'main'} is not in the local cache and downloads are off "
            f"(HF_HUB_OFFLINE=1 or no network): fetch it once online, or point models.<key>.revision at a "
            f"cached one") from err
    # The snapshot folder is named after the resolved commit hash: record it so the run is pinned.
    return {"source": "hf", "repo_id": repo_id, "revision": revision, "commit": Path(path).name, "path": path}


def write_model_ref(out_dir: str | Path, ref: dict) -> None:
    """Point `out_dir` at a model stored elsewhere (a local path or a hub snapshot)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REF_FILE).write_text(json.dumps(ref, indent=2))


def read_model_ref(path: str | Path) -> dict | None:
    """The model_ref.json of a stage directory, or None when the directory holds the model itself."""
    ref = Path(path) / REF_FILE
    return json.loads(ref.read_text()) if ref.exists() else None


def resolve_model_path(path: str | Path) -> str:
    """The directory holding a model's weights: `path` itself, or where its model_ref.json points."""
    path = Path(path)
    ref = read_model_ref(path)
    if ref is not None:
        return ref["path"]
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise FileNotFoundError(f"no model at {path}: neither config.json, adapter_config.json nor {REF_FILE}")
    return str(path)


def check_model_files(path: str | Path) -> dict:
    """Check a model folder without loading its weights: its config and tokenizer load, and its weight
    files are there and readable. Parameters are counted from the safetensors headers (a 7B model loaded
    in float32 on the CPU just to be checked would take ~28 GB); `.bin` weights from a meta-device model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    weights = Path(resolve_model_path(path))
    config = AutoConfig.from_pretrained(weights)
    tokenizer = AutoTokenizer.from_pretrained(weights)
    ref = read_model_ref(path) or {}
    if ref.get("pad_token") and tokenizer.pad_token is None:
        tokenizer.pad_token = ref["pad_token"]
    check_tokenizer(tokenizer, str(path))
    shards = sorted(weights.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open

        parameters = 0
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:  # reads the header only
                for name in f.keys():
                    shape = f.get_slice(name).get_shape()
                    parameters += int(torch.tensor(shape).prod()) if shape else 1
    elif list(weights.glob("*.bin")):
        with torch.device("meta"):
            parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    else:
        raise FileNotFoundError(f"no weights (*.safetensors or *.bin) in model folder {weights}")
    return {"parameters": parameters, "architectures": config.architectures, "weights_files": len(shards)}


def check_tokenizer(tokenizer, where: str) -> None:
    """Fail early on a tokenizer the trainers cannot batch with."""
    if tokenizer.pad_token is None:
        raise ValueError(
            f"tokenizer of {where} has no pad token; set base_model.pad_token in config "
            f"(e.g. its eos token {tokenizer.eos_token!r}) or use a tokenizer that defines one")
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer of {where} has no chat template; prompts are formatted as chat turns")


def load_model_and_tokenizer(path: str | Path, dtype: str = "float32", pad_token: str | None = None):
    """Load a causal LM (or a saved peft adapter on its base) and its tokenizer from a stage directory.

    A base model recorded by reference carries the config's `pad_token` in its model_ref.json, so every
    downstream job that loads it gets the same tokenizer the base_model job checked.
    """
    from transformers import AutoTokenizer

    weights = resolve_model_path(path)
    pad_token = pad_token or (read_model_ref(path) or {}).get("pad_token")
    tokenizer = AutoTokenizer.from_pretrained(weights)
    if pad_token is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = pad_token
    check_tokenizer(tokenizer, str(path))
    return _load_causal_lm(weights, getattr(torch, dtype)), tokenizer


def _load_causal_lm(weights: str, torch_dtype):
    """The causal LM in `weights`; an adapter comes merged into its base, with every parameter trainable.

    peft's merge leaves each parameter with requires_grad=False, so a full fine-tune of a LoRA-aligned
    model trained nothing (grad_norm 0, KL 0 to its aligned model) until this switched them back on. An
    adapter trained on a merged adapter (a LoRA regime on a LoRA-aligned model) names that stage in
    `ADAPTER_PARENT`: its base is the parent merged, not the parent's own base model.
    """
    from transformers import AutoModelForCausalLM

    if not os.path.exists(os.path.join(weights, "adapter_config.json")):
        return AutoModelForCausalLM.from_pretrained(weights, dtype=torch_dtype)
    parent = Path(weights) / ADAPTER_PARENT
    if parent.is_file():
        from peft import PeftModel

        base = _load_causal_lm(resolve_model_path(Path(weights) / json.loads(parent.read_text())["stage"]), torch_dtype)
        model = PeftModel.from_pretrained(base, weights).merge_and_unload()
    else:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(weights, dtype=torch_dtype).merge_and_unload()
    return model.requires_grad_(True)


def write_adapter_parent(adapter_dir: str | Path, parent_stage: str | Path) -> None:
    """Record that the adapter in `adapter_dir` was trained on the merged adapter of `parent_stage`
    (a path relative to `adapter_dir`, so a moved results folder still loads)."""
    relative = os.path.relpath(Path(parent_stage).resolve(), Path(adapter_dir).resolve())
    (Path(adapter_dir) / ADAPTER_PARENT).write_text(json.dumps({"stage": relative}) + "\n")


def is_adapter(path: str | Path) -> bool:
    """Whether a stage directory holds a LoRA adapter (loaded merged into its base)."""
    return (Path(resolve_model_path(path)) / "adapter_config.json").is_file()
