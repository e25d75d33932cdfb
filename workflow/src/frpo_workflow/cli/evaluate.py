"""CLI of the evaluate stage: generate, judge and compute KL for one model state; writes metrics.json.

    python -m frpo_workflow.cli.evaluate --spec '{"sets": {...}, "max_new_tokens": 24, ..., "state": {...}}' \
        --model results/aligned/tiny/grpo --reference results/base_model/tiny \
        --eval-data harmful=results/data/datasets/eval_harmful benign=... task=... \
        --out results/eval/aligned/tiny/grpo
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..base_model import load_model_and_tokenizer, resolve_model_path
from ..data.loaders import read_dataset
from ..devices import check_devices
from ..evaluate import evaluate_model, write_generations, write_metrics
from ..generation import generate_vllm
from ..harness import HarnessUnavailable, run_harness
from ..prompts import truncate_prompts
from .common import log_source, named_paths, parser, setup_logging, tracked_job


@contextmanager
def full_weights(model_dir: str, model, tokenizer):
    """A folder with the model's full weights, for tools that load it themselves (vLLM, lm-eval, EvalPlus):
    the model's own folder, or a temporary one holding a LoRA adapter merged into its base."""
    weights = resolve_model_path(model_dir)
    if not os.path.exists(os.path.join(weights, "adapter_config.json")):
        yield weights
        return
    with tempfile.TemporaryDirectory() as merged:
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        yield merged


def run_harnesses(specs: list, model_dir: str, model, tokenizer, device: str, out: Path, log) -> dict:
    """Every configured harness (lm-eval, EvalPlus) on the model; one not installed is skipped, said once."""
    metrics: dict = {}
    for spec in specs:
        try:
            with full_weights(model_dir, model, tokenizer) as weights:
                metrics.update(run_harness(spec, weights, device, out / "harness" / spec["tool"]))
        except HarnessUnavailable as skipped:
            log.warning("skipped evaluate.harness %s: %s", spec, skipped)
    return metrics


def trained(model_dir: str) -> dict:
    """How the evaluated state was trained ({"train": {global_step, learning_signal, grad_norm_max, ...}}), from
    its training summary; nothing for the base model. It stays beside the metrics when the weights go."""
    summary = Path(model_dir) / "train_summary.json"
    if not summary.is_file():
        return {}
    values = json.loads(summary.read_text())
    norms = [h["grad_norm"] for h in values.get("log_history", []) if "grad_norm" in h]
    # update_settings: what the update was (an alignment's), for the report's check that arms differ in
    # the method only (frpo_workflow.arms).
    # defence: what a downstream regime's defence or attack added, and its cost (frpo_workflow.defences).
    return {"train": {**{k: values[k] for k in ("global_step", "learning_signal", "update_settings", "defence")
                         if k in values},
                      "grad_norm_max": max(norms, default=None)}}


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--reference", default=None, help="model for KL(model || reference); none for the base")
    p.add_argument("--eval-data", nargs="+", required=True, metavar="SET=DIR", help="evaluation sets' dataset folders")
    args = p.parse_args(argv)
    log = setup_logging()
    eval_dirs = named_paths(args.eval_data)
    inputs = {"model": args.model, **{f"eval_{k}": v for k, v in eval_dirs.items()},
              **({"reference": args.reference} if args.reference else {})}
    with tracked_job(args, inputs=inputs) as (run, spec, out, extra):
        device = check_devices()
        dtype = "bfloat16" if device.startswith("cuda") else "float32"  # float32: bf16 is slow on CPUs
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=dtype)
        model.to(device)
        ref = load_model_and_tokenizer(args.reference, dtype=dtype)[0].to(device) if args.reference else None
        sets, truncated = {}, 0
        for name, directory in eval_dirs.items():
            sets[name], cut = truncate_prompts(read_dataset(directory), tokenizer, spec.get("max_prompt_length"))
            truncated += cut
            log_source(run, directory, spec["sets"][name], "evaluation")
        if truncated:
            log.warning("cut %d prompts to max_prompt_length=%d tokens", truncated, spec["max_prompt_length"])
        answers = None
        if spec.get("backend") == "vllm":
            prompts = {name: [r["prompt"] for r in records] for name, records in sets.items() if records}
            with full_weights(args.model, model, tokenizer) as weights:
                answers = generate_vllm(weights, tokenizer, prompts, spec["max_new_tokens"], spec.get("vllm"))
        metrics, generations = evaluate_model(
            model, tokenizer, sets, ref_model=ref, max_new_tokens=spec["max_new_tokens"],
            batch_size=spec["batch_size"], kl_samples=spec["kl_samples"], seed=spec["seed"], return_generations=True,
            metrics=spec["metrics"], answers=answers, sampled=spec.get("sampled"))
        write_generations(out / "generations.jsonl", generations)
        if (Path(args.model) / "curves.json").is_file():  # a fine-tune's curves outlive its weights here
            shutil.copyfile(Path(args.model) / "curves.json", out / "curves.json")
        metrics["prompts_truncated"] = truncated
        metrics.update(run_harnesses(spec.get("harness", []), args.model, model, tokenizer, device, out, log))
        write_metrics(out / "metrics.json", {**spec["state"], "metrics": metrics, **trained(args.model)})
        run.log_metrics(metrics)
        run.log_artifact(str(out / "metrics.json"))
        log.info("metrics: %s", metrics)


if __name__ == "__main__":
    main()
