"""Curves along a downstream fine-tune: `CurveCallback` evaluates the training model every k steps.

Apart from `evaluate` because it subclasses transformers' `TrainerCallback`, whose module imports peft and
the Trainer's utilities: only the finetune CLI needs it, and the evaluate CLI stays lighter without it.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from .evaluate import evaluate_model, read_metrics, write_metrics


class CurveCallback(TrainerCallback):
    """Evaluates the training model at step 0, every `every_k_steps` and at the end; writes `{"points": [...]}`.

    The file is rewritten after each point, so an interrupted job keeps its curve so far; a resumed job
    keeps the points recorded before the step it resumes from. Runs on the main process only, so it
    cannot serve a sharded (ZeRO-3/FSDP) model, whose generation needs every rank.
    """

    def __init__(self, tokenizer, sets: dict[str, list[dict]], out_path: str | Path, every_k_steps: int,
                 ref_model=None, max_new_tokens: int = 32, batch_size: int = 64, kl_samples: int | None = 64,
                 seed: int = 0, metrics: dict | None = None, sampled: dict | None = None):
        if every_k_steps < 1:
            raise ValueError(f"every_k_steps must be >= 1, got {every_k_steps}")
        self.tokenizer, self.sets, self.out_path = tokenizer, sets, Path(out_path)
        self.every_k_steps, self.ref_model = every_k_steps, ref_model
        self.options = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "kl_samples": kl_samples,
                        "seed": seed, "metrics": metrics, "sampled": sampled}
        self.points: list[dict] = []

    def _record(self, state, model) -> None:
        if not state.is_world_process_zero or any(p["step"] == state.global_step for p in self.points):
            return
        model = getattr(model, "module", model)  # DDP wraps the model; generate() lives on the inner one
        metrics = evaluate_model(model, self.tokenizer, self.sets, ref_model=self.ref_model, **self.options)
        self.points.append({"step": state.global_step, **metrics})
        write_metrics(self.out_path, {"points": self.points})

    def on_train_begin(self, args, state, control, **kwargs):
        if self.out_path.exists():
            self.points = [p for p in read_metrics(self.out_path)["points"] if p["step"] < state.global_step]
        self._record(state, kwargs["model"])

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_k_steps == 0:
            self._record(state, kwargs["model"])

    def on_train_end(self, args, state, control, **kwargs):
        self._record(state, kwargs["model"])
