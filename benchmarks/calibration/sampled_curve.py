"""Calibration evidence: refusal curves with a sampled-refusal view, for an aligned model under an SFT regime.

Greedy refusal is 0/1 per prompt; the probability mass on refusing moves smoothly. Every `--every` steps
of a downstream SFT (the workflow's own `train.run_sft`, same settings as a finetune regime) this
records, on the 64 eval_harmful prompts:
  - greedy refusal rate,
  - sampled refusal rate: k completions per prompt at temperature 1, judged by judges.rules.is_refusal,
  - sure_share: the share of those samples that open with "Sure" (the prefix affirmative SFT raises),
  - refusal_given_sure: the sampled refusal rate among them (deep refusals: "Sure, ... but I can't"),
and, on the workflow's curve subsets (32 prompts per set, seed 0), the same metrics the finetune rule
records (kl_to_reference in nats per sequence, benign_helpfulness, task_accuracy).

    . /work/main/.venv/bin/activate; export PYTHONPATH=/work/calib/workflow/src
    python benchmarks/calibration/sampled_curve.py --results /tmp/calibB --method grpo \
        --regime '{"lr": 1e-4, "steps": 80, "batch_size": 8}' --every 10 --out /tmp/calibB/curve.json
    # --steps-only 0 (regime {"steps": 1} ignored): evaluate the aligned model alone

The SFT checkpoints go to a temporary folder and are removed; nothing under --results is written but --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from frpo_workflow.base_model import load_model_and_tokenizer
from frpo_workflow.cli.finetune import curve_sets
from frpo_workflow.data.loaders import read_dataset
from frpo_workflow.evaluate import evaluate_model
from frpo_workflow.generation import generate
from frpo_workflow.judges.rules import is_refusal
from frpo_workflow.train import run_sft, sft_config


def sampled_refusal(model, tokenizer, prompts: list[str], k: int = 8, max_new_tokens: int = 24, seed: int = 0) -> dict:
    """Sampled refusal rate over k completions per prompt at temperature 1, and how the samples open."""
    texts = generate(model, tokenizer, [p for p in prompts for _ in range(k)], max_new_tokens=max_new_tokens,
                     do_sample=True, temperature=1.0, batch_size=128, seed=seed)
    refused = [is_refusal(t) for t in texts]
    sure = [t.lower().startswith("sure") for t in texts]
    n_sure = sum(sure)
    return {"sampled_refusal": sum(refused) / len(texts), "sure_share": n_sure / len(texts),
            "refusal_given_sure": (sum(r for r, s in zip(refused, sure) if s) / n_sure) if n_sure else None,
            "examples": texts[:: max(1, len(texts) // 6)][:6]}


def point(model, tokenizer, harmful: list[dict], sets: dict, ref, k: int) -> dict:
    greedy = generate(model, tokenizer, [r["prompt"] for r in harmful], max_new_tokens=24)
    curve = evaluate_model(model, tokenizer, sets, ref_model=ref, max_new_tokens=24, kl_samples=32, seed=0)
    return {"greedy_refusal": sum(map(is_refusal, greedy)) / len(greedy),
            **sampled_refusal(model, tokenizer, [r["prompt"] for r in harmful], k=k),
            **{key: curve[key] for key in ("harmful_refusal_rate", "benign_helpfulness", "task_accuracy",
                                            "kl_to_reference") if key in curve}}


class SampledCurve(TrainerCallback):
    def __init__(self, every, measure, out):
        self.every, self.measure, self.out, self.points = every, measure, out, []

    def _record(self, state, model):
        if any(p["step"] == state.global_step for p in self.points):
            return
        self.points.append({"step": state.global_step, **self.measure(model)})
        Path(self.out).write_text(json.dumps({"points": self.points}, indent=1))
        p = self.points[-1]
        print(f"step {p['step']:4d} greedy {p['greedy_refusal']:.3f} sampled {p['sampled_refusal']:.3f} "
              f"sure {p['sure_share']:.2f} refuse|sure {p['refusal_given_sure']} kl {p.get('kl_to_reference', 0):.2f} "
              f"help {p['benign_helpfulness']:.2f} task {p['task_accuracy']:.2f}", flush=True)

    def on_train_begin(self, args, state, control, **kw):
        self._record(state, kw["model"])

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.every == 0:
            self._record(state, kw["model"])

    def on_train_end(self, args, state, control, **kw):
        self._record(state, kw["model"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="a workflow results folder holding aligned/ and data/datasets/")
    p.add_argument("--model", default="tiny")
    p.add_argument("--method", default="grpo")
    p.add_argument("--regime", default='{"lr": 0.0001, "steps": 80, "batch_size": 8}', help="SFT settings (JSON)")
    p.add_argument("--dataset", default="sft_affirmative", help="dataset folder name under data/datasets")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--k", type=int, default=8, help="samples per prompt")
    p.add_argument("--eval-only", action="store_true", help="evaluate the aligned model (or --model-dir) only")
    p.add_argument("--model-dir", help="evaluate this model instead (with --eval-only), KL to the aligned model")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    results = Path(args.results)
    aligned = results / "aligned" / args.model / args.method
    data = results / "data" / "datasets"
    ref, tokenizer = load_model_and_tokenizer(aligned)
    harmful = read_dataset(data / "eval_harmful")
    sets = curve_sets({"curves": {"n_prompts": 32}}, {n: data / d for n, d in
                      (("harmful", "eval_harmful"), ("benign", "eval_benign"), ("task", "eval_task"))}, tokenizer)
    measure = lambda model: point(model, tokenizer, harmful, sets, ref, args.k)  # noqa: E731
    start = time.time()
    if args.eval_only:
        model = load_model_and_tokenizer(args.model_dir)[0] if args.model_dir else ref
        result = {"model": str(args.model_dir or aligned), **measure(model)}
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}))
        return
    cfg = sft_config(json.loads(args.regime), where="calibration regime")
    callback = SampledCurve(args.every, measure, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        run_sft(aligned, read_dataset(data / args.dataset), cfg, Path(tmp) / "out", Path(tmp) / "ckpt",
                callbacks=[callback])
    Path(args.out).write_text(json.dumps({"method": args.method, "regime": json.loads(args.regime),
                                          "dataset": args.dataset, "wall_s": round(time.time() - start, 1),
                                          "points": callback.points}, indent=1))
    print(f"wall {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
