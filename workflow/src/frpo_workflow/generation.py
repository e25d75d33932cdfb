"""Generation for evaluation: chat-formatted prompts in, completions (token ids or text) out.

Used by `evaluate` (greedy answers to judge, sampled answers for the KL estimate) and by the curve
callback in the middle of training, so it leaves the model's train/eval mode and the global RNG as it
found them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .prompts import chat_text


def chat_prompts(tokenizer, prompts: list) -> list[str]:
    """Each prompt (text or chat messages) as the model's chat text, ending where the assistant's turn begins."""
    return [chat_text(tokenizer, p) for p in prompts]


def encode_prompts(tokenizer, prompts: list, device) -> dict:
    """Left-padded prompt batch, so every row's next token sits in the last column."""
    # The chat template already writes any BOS/markup; the tokenizer must not add its own again.
    return tokenizer(chat_prompts(tokenizer, prompts), return_tensors="pt", padding=True, padding_side="left",
                     add_special_tokens=False).to(device)


def eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends a turn: the tokenizer's eos and the model's (some models list several)."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return sorted({*ids, tokenizer.eos_token_id} - {None})


@contextmanager
def eval_mode(model):
    """Evaluation mode for the block, then back to training mode if the model was training."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device(model):
    return next(model.parameters()).device


def generate_ids(model, tokenizer, prompts: list, max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, seed: int = 0) -> list[list[int]]:
    """Completion token ids per prompt, cut after the first eos (kept: it is a sampled token too)."""
    if tokenizer.pad_token_id is None:
        raise ValueError("generation pads prompt batches: the tokenizer needs a pad token")
    stop = eos_ids(model, tokenizer)
    # Only these knobs shape the distribution: a hub model's generation_config may carry its own top_k or
    # repetition penalty, which would make "sampled from the model" untrue for the KL estimate.
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
                "repetition_penalty": 1.0} if do_sample else {"do_sample": False}
    device = _device(model)
    forked = [device] if device.type == "cuda" else []
    out: list[list[int]] = []
    # fork_rng: seeded sampling here must not shift the RNG stream of the training run around it.
    with eval_mode(model), torch.inference_mode(), torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            batch = encode_prompts(tokenizer, prompts[start:start + batch_size], device)
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=stop,
                                       pad_token_id=tokenizer.pad_token_id, **sampling)
            for row in generated[:, batch["input_ids"].shape[1]:].tolist():
                ends = [i for i, token in enumerate(row) if token in stop]
                out.append(row[: ends[0] + 1] if ends else row)
    return out


def generate(model, tokenizer, prompts: list, max_new_tokens: int = 32, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, seed: int = 0) -> list[str]:
    """Completion text per prompt: greedy by default, seeded when sampling; special tokens removed."""
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                       temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def generate_vllm(weights_dir: str, tokenizer, prompt_sets: dict[str, list], max_new_tokens: int,
                  engine: dict | None = None) -> dict[str, list[str]]:
    """Greedy completions per set with vLLM (the optional `vllm` extra, CUDA), in one engine for all sets.

    `weights_dir` must hold full weights (merge an adapter first). The prompts are the same chat text
    HF generation uses, so the two backends judge the same inputs.
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError("evaluate.backend is vllm but vllm is not installed: pip install -e '.[vllm]' on a "
                           "CUDA machine, or set evaluate.backend: hf")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(weights_dir), tokenizer=str(weights_dir), **(engine or {}))
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
    return {name: [out.outputs[0].text.strip() for out in llm.generate(chat_prompts(tokenizer, prompts), params)]
            for name, prompts in prompt_sets.items()}
