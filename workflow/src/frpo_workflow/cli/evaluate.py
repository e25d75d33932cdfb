"""CLI of the evaluate stage: generate, judge and compute KL for one model state; writes metrics.json.

    python -m frpo_workflow.cli.evaluate --spec '{"sets": {...}, "max_new_tokens": 24, ..., "state": {...}}' \
        --model results/aligned/tiny/grpo --reference results/base_model/tiny \
        --eval-data harmful=results/data/datasets/eval_harmful benign=... task=... \
        --out results/eval/aligned/tiny/grpo
"""

from ..base_model import load_model_and_tokenizer
from ..data.loaders import read_dataset
from ..evaluate import evaluate_model, write_generations, write_metrics
from ..prompts import truncate_prompts
from .common import log_source, named_paths, parser, setup_logging, tracked_job


def vllm_answers(model_dir: str, model, tokenizer, sets: dict, spec: dict) -> dict:
    """Greedy answers from vLLM; an adapter is merged into a temporary full-weight folder first."""
    import os
    import tempfile

    from ..base_model import resolve_model_path
    from ..generation import generate_vllm

    prompts = {name: [r["prompt"] for r in records] for name, records in sets.items() if records}
    weights = resolve_model_path(model_dir)
    if not os.path.exists(os.path.join(weights, "adapter_config.json")):
        return generate_vllm(weights, tokenizer, prompts, spec["max_new_tokens"], spec.get("vllm"))
    with tempfile.TemporaryDirectory() as merged:
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        return generate_vllm(merged, tokenizer, prompts, spec["max_new_tokens"], spec.get("vllm"))


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
        model, tokenizer = load_model_and_tokenizer(args.model)
        ref = load_model_and_tokenizer(args.reference)[0] if args.reference else None
        sets, truncated = {}, 0
        for name, directory in eval_dirs.items():
            sets[name], cut = truncate_prompts(read_dataset(directory), tokenizer, spec.get("max_prompt_length"))
            truncated += cut
            log_source(run, directory, spec["sets"][name], "evaluation")
        if truncated:
            log.warning("cut %d prompts to max_prompt_length=%d tokens", truncated, spec["max_prompt_length"])
        answers = None
        if spec.get("backend") == "vllm":
            answers = vllm_answers(args.model, model, tokenizer, sets, spec)
        metrics, generations = evaluate_model(
            model, tokenizer, sets, ref_model=ref, max_new_tokens=spec["max_new_tokens"],
            batch_size=spec["batch_size"], kl_samples=spec["kl_samples"], seed=spec["seed"], return_generations=True,
            metrics=spec["metrics"], answers=answers)
        write_generations(out / "generations.jsonl", generations)
        metrics["prompts_truncated"] = truncated
        write_metrics(out / "metrics.json", {**spec["state"], "metrics": metrics})
        run.log_metrics(metrics)
        run.log_artifact(str(out / "metrics.json"))
        log.info("metrics: %s", metrics)


if __name__ == "__main__":
    main()
