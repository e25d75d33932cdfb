"""CLI of the finetune stage: a downstream SFT or RL fine-tune of an aligned model, with curves.

    accelerate launch --config_file workflow/accelerate/cpu.yaml -m frpo_workflow.cli.finetune \
        --spec '{"type": "sft", "settings": {...}, "dataset": {...}, "curves": {...}, "eval_sets": {...},
                 "state": {...}}' --model results/aligned/tiny/grpo --data results/data \
        --checkpoints results/checkpoints/finetuned/tiny/grpo/sft-affirmative/seed0 \
        --out results/finetuned/tiny/grpo/sft-affirmative/seed0

Curves (refusal, helpfulness, task accuracy, KL to the aligned model along the fine-tune) are recorded
next to the checkpoints, so a resumed job keeps its earlier points, and copied to <out>/curves.json.
"""

import json
import random
from pathlib import Path

from ..base_model import load_model_and_tokenizer
from ..data.loaders import load_records
from ..evaluate import CurveCallback
from ..tracking import MlflowMetricsCallback
from ..train import policy_config, run_policy_optimisation, run_sft, sft_config
from .common import log_source, parser, setup_logging, tracked_job


def curve_sets(spec: dict, data_dir: str) -> dict:
    """A fixed, seeded subset of each evaluation set, small enough to evaluate every few steps."""
    n = spec["curves"]["n_prompts"]
    sets = {}
    for name, source in spec["eval_sets"].items():
        records = load_records(source, toy_dir=data_dir)
        sets[name] = random.Random(0).sample(records, n) if len(records) > n else records
    return sets


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="the aligned model (also the KL reference)")
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoints", required=True)
    args = p.parse_args(argv)
    log = setup_logging()
    with tracked_job(args, inputs={"model": args.model, "data": args.data}) as (run, spec, out, extra):
        records = load_records(spec["dataset"], toy_dir=args.data)
        log_source(run, spec["dataset"], args.data, "finetune", "training")
        curves = spec["curves"]
        reference, tokenizer = load_model_and_tokenizer(args.model)
        curve_path = Path(args.checkpoints) / "curves.json"
        curve_cb = CurveCallback(tokenizer, curve_sets(spec, args.data), curve_path, curves["every"],
                                 ref_model=reference, max_new_tokens=curves["max_new_tokens"],
                                 kl_samples=curves["n_prompts"], seed=0)
        callbacks = [curve_cb, MlflowMetricsCallback(run)]
        if spec["type"] == "sft":
            cfg = sft_config(spec["settings"], where=f"finetune regime {spec['state']['regime']}")
            summary = run_sft(args.model, records, cfg, out, args.checkpoints, callbacks=callbacks)
        else:
            cfg = policy_config(spec["settings"], where=f"finetune regime {spec['state']['regime']}")
            summary = run_policy_optimisation(args.model, records, cfg, out, args.checkpoints, callbacks=callbacks)
        points = json.loads(curve_path.read_text())["points"]
        (out / "curves.json").write_text(json.dumps({**spec["state"], "points": points}, indent=2))
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        for point in points:
            run.log_metrics({f"curve.{k}": v for k, v in point.items() if k != "step"}, step=point["step"])
        extra["train"] = {k: v for k, v in summary.items() if k != "log_history"}
        log.info("fine-tuned (%s) in %.1fs", spec["type"], summary["train_runtime_s"] or 0)


if __name__ == "__main__":
    main()
