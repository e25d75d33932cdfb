"""Evaluation of a model: judged generations on the evaluation sets, KL to a reference, curves.

`evaluate_model` is shared by the evaluate rule (one `metrics.json` per model) and by `curves.CurveCallback`,
which records the same metrics every k steps of a downstream fine-tune (in a module of its own: the Trainer's
callback module pulls in peft, which an evaluate job does not need). Scores come from the judge registry,
so an evaluation metric is the very function that served as a training reward.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

from .generation import encode_prompts, eval_mode, generate, generate_ids
from .judges import build_judge
from .metrics import DEFAULT_METRICS, SETS, judge_columns, judge_name



class KLEstimate(NamedTuple):
    per_sequence: float  # mean over prompts of the KL summed over the completion's tokens
    per_token: float     # the same total divided by the number of completion tokens


def _completion_logprobs(model, input_ids, attention_mask, width: int) -> torch.Tensor:
    """Log-probabilities over the vocabulary (float32) for each of the last `width` tokens of `input_ids`."""
    device = next(model.parameters()).device
    # Positions count real tokens only, as generate() does: RoPE models would not mind the shift that left
    # padding causes, but models with absolute positions would.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                   position_ids=position_ids.to(device), logits_to_keep=width + 1).logits[:, :-1]
    return torch.log_softmax(logits.float(), dim=-1)


def sequence_kl(model, ref_model, tokenizer, prompts: list, completions: list, batch_size: int = 64) -> KLEstimate:
    """KL(model ‖ ref_model) on `prompts`, over completions sampled from `model` (token ids or texts).

    At every completion position the KL is computed exactly over the vocabulary, then summed over the
    completion: lower variance than the sampled log-ratio, and zero when the models agree.
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"sequence_kl needs one completion per prompt, got {len(prompts)} and {len(completions)}")
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"] if isinstance(c, str) else list(c)
            for c in completions]
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with eval_mode(model), eval_mode(ref_model), torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = rows[start:start + batch_size]
            prompt = encode_prompts(tokenizer, prompts[start:start + batch_size], device)
            width = max(len(r) for r in batch)
            if width == 0:
                continue
            # Prompts left-padded, completions right-padded: every completion starts in the same column.
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
            mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
            for i, r in enumerate(batch):
                ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, :len(r)] = 1
            input_ids = torch.cat([prompt["input_ids"], ids], dim=1)
            attention = torch.cat([prompt["attention_mask"], mask], dim=1)
            logp = _completion_logprobs(model, input_ids, attention, width)
            logq = _completion_logprobs(ref_model, input_ids, attention, width).to(device)
            kl = (logp.exp() * (logp - logq)).sum(-1)
            # where(), not a product: a padded position's logits may be NaN, and NaN * 0 is NaN.
            total += torch.where(mask.bool(), kl, 0.0).sum().item()
            tokens += int(mask.sum())
    return KLEstimate(total / len(prompts), total / max(tokens, 1))


def _mean_score(judge_spec, set_name: str, records: list[dict], completions: list[str]) -> tuple[float, list]:
    """The judge's mean over the rows it applies to, and every row's score. A conditional judge (one scoring
    only rows with some property, e.g. refusal given an affirmative opening: `judge.conditional`) that
    applies to none has no mean (NaN); any other judge applying to none is an error."""
    judge = build_judge(judge_spec)
    columns = judge_columns(records)
    scores = judge([r["prompt"] for r in records], completions, **columns)
    applied = [s for s in scores if s is not None]
    if not applied:
        if getattr(judge, "conditional", False):
            return math.nan, scores
        raise ValueError(f"judge {judge_name(judge_spec)!r} applies to none of the {len(records)} records of set "
                         f"{set_name!r} (their kinds: {sorted({str(k) for k in columns['kind']})})")
    return sum(applied) / len(applied), scores


def _sampled_texts(model, tokenizer, records: list[dict], sampled: dict, max_new_tokens: int, batch_size: int,
                   seed: int) -> list[str]:
    """`k` answers per record sampled at the sampled temperature, each prompt's k side by side. Drawn once per
    evaluation set and judged by every sampled metric on it (the same seed drew the same answers for each)."""
    k = sampled["k"]
    return generate(model, tokenizer, [r["prompt"] for r in records for _ in range(k)], max_new_tokens=max_new_tokens,
                    do_sample=True, temperature=sampled.get("temperature", 1.0), batch_size=batch_size,
                    seed=seed + 1)  # not the KL estimate's seed: its samples are drawn separately


def _sampled_score(spec: dict, records: list[dict], texts: list[str], k: int) -> tuple[float, list]:
    """Mean judge score over the `k` sampled answers per record (`texts`), and each record's own mean (None
    where the judge applies to none of its answers)."""
    repeated = [r for r in records for _ in range(k)]  # each prompt's k samples side by side
    mean, scores = _mean_score(spec["judge"], spec["set"], repeated, texts)
    per_prompt = []
    for i in range(len(records)):
        applied = [s for s in scores[i * k:(i + 1) * k] if s is not None]
        per_prompt.append(sum(applied) / len(applied) if applied else None)
    return mean, per_prompt


def evaluate_model(model, tokenizer, sets: dict[str, list[dict]], ref_model=None, max_new_tokens: int = 32,
                   batch_size: int = 64, kl_samples: int | None = 64, kl_sets: tuple = ("harmful", "benign"),
                   seed: int = 0, return_generations: bool = False, metrics: dict | None = None,
                   answers: dict[str, list[str]] | None = None, sampled: dict | None = None):
    """Metrics of `model` on the evaluation sets (keys among harmful, benign, task; each optional).

    Greedy answers are judged per `metrics` (name -> {set, judge}; default `metrics.DEFAULT_METRICS`),
    each metric on the sets present. `answers` (set -> completions) replaces the greedy generation,
    for answers another backend (vLLM) generated. `sampled` ({k, temperature, metrics: [names]}) adds
    `<name>_sampled` for each named metric: the mean score of k answers per prompt sampled at `temperature`,
    the probability mass on (say) refusing, which moves smoothly where the greedy answer flips (drawn with HF
    generate whatever the backend). With `ref_model`, `kl_to_reference` (and its per-token mean) is
    estimated on up to `kl_samples` prompts of `kl_sets` (a seeded subset; None: all), with completions
    sampled at temperature 1. With `return_generations`, also returns one row per prompt
    (set, id, prompt, completion, and every score), for a `generations.jsonl` to inspect.
    """
    unknown = set(sets) - set(SETS)
    if unknown:
        raise ValueError(f"unknown evaluation sets {sorted(unknown)}; known: {list(SETS)}")
    specs = DEFAULT_METRICS if metrics is None else metrics
    metrics: dict[str, float] = {f"n_{name}": len(sets.get(name, [])) for name in SETS}
    if answers is None:
        answers = {name: generate(model, tokenizer, [r["prompt"] for r in records], max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, seed=seed)
                   for name, records in sets.items() if records}
    generations = {name: [{"set": name, "id": r.get("id"), "prompt": r["prompt"], "completion": c}
                          for r, c in zip(sets[name], texts)] for name, texts in answers.items()}
    for metric, spec in specs.items():
        if spec["set"] in answers:
            metrics[metric], scores = _mean_score(spec["judge"], spec["set"], sets[spec["set"]], answers[spec["set"]])
            for row, score in zip(generations[spec["set"]], scores):
                row[judge_name(spec["judge"])] = score
    sampled = sampled if sampled and sampled.get("k") else {"metrics": []}  # k = 0: no sampled metrics
    drawn: dict[str, list[str]] = {}  # set -> its sampled answers, drawn once for every sampled metric on it
    for metric in sampled["metrics"]:
        spec = specs[metric]
        if spec["set"] not in sets or not sets[spec["set"]]:
            continue
        if spec["set"] not in drawn:
            drawn[spec["set"]] = _sampled_texts(model, tokenizer, sets[spec["set"]], sampled, max_new_tokens,
                                                batch_size, seed)
        metrics[f"{metric}_sampled"], per_prompt = _sampled_score(spec, sets[spec["set"]], drawn[spec["set"]],
                                                                  sampled["k"])
        if spec["set"] in generations:
            for row, score in zip(generations[spec["set"]], per_prompt):
                row[f"{judge_name(spec['judge'])}_sampled"] = score
    if ref_model is not None:
        prompts = [r["prompt"] for name in kl_sets for r in sets.get(name, [])]
        if not prompts:
            raise ValueError(f"kl_to_reference needs prompts from sets {list(kl_sets)}; got sets {sorted(sets)}")
        if kl_samples is not None and len(prompts) > kl_samples:
            prompts = random.Random(seed).sample(prompts, kl_samples)
        sampled = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                               batch_size=batch_size, seed=seed)
        kl = sequence_kl(model, ref_model, tokenizer, prompts, sampled, batch_size=batch_size)
        metrics["kl_to_reference"], metrics["kl_to_reference_per_token"] = kl.per_sequence, kl.per_token
    if return_generations:
        return metrics, [row for rows in generations.values() for row in rows]
    return metrics


def _atomic_write(path: str | Path, text: str) -> None:
    """Write `text` to `path` so a reader never sees half a file (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def write_metrics(path: str | Path, record: dict) -> None:
    """Atomically write a metrics record as JSON."""
    _atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_metrics(path: str | Path) -> dict:
    """A metrics record written by `write_metrics`."""
    return json.loads(Path(path).read_text())


def write_generations(path: str | Path, rows: list[dict]) -> None:
    """Atomically write per-prompt generations as JSON lines."""
    _atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))
