"""CLI of the evaluate stage: generate, judge and compute KL for one model state; writes metrics.json.

    python -m frpo_workflow.cli.evaluate --spec '{"sets": {...}, "max_new_tokens": 24, ..., "state": {...}}' \
        --model results/aligned/tiny/grpo --reference results/base_model/tiny --data results/data \
        --out results/eval/aligned/tiny/grpo
"""

from ..base_model import load_model_and_tokenizer
from ..data.loaders import load_records
from ..evaluate import evaluate_model, write_generations, write_metrics
from .common import log_source, parser, setup_logging, tracked_job


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--reference", default=None, help="model for KL(model || reference); none for the base")
    p.add_argument("--data", required=True)
    args = p.parse_args(argv)
    log = setup_logging()
    inputs = {"model": args.model, "data": args.data, **({"reference": args.reference} if args.reference else {})}
    with tracked_job(args, inputs=inputs) as (run, spec, out, extra):
        model, tokenizer = load_model_and_tokenizer(args.model)
        ref = load_model_and_tokenizer(args.reference)[0] if args.reference else None
        sets = {}
        for name, source in spec["sets"].items():
            sets[name] = load_records(source, toy_dir=args.data)
            log_source(run, source, args.data, f"eval_{name}", "evaluation")
        metrics, generations = evaluate_model(
            model, tokenizer, sets, ref_model=ref, max_new_tokens=spec["max_new_tokens"],
            batch_size=spec["batch_size"], kl_samples=spec["kl_samples"], seed=spec["seed"], return_generations=True)
        write_generations(out / "generations.jsonl", generations)
        write_metrics(out / "metrics.json", {**spec["state"], "metrics": metrics})
        run.log_metrics(metrics)
        run.log_artifact(str(out / "metrics.json"))
        log.info("metrics: %s", metrics)


if __name__ == "__main__":
    main()
