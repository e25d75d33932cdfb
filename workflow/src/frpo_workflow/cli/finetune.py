"""CLI of the finetune stage: a downstream SFT or RL fine-tune of an aligned model, with curves.

    accelerate launch --config_file workflow/accelerate/cpu.yaml -m frpo_workflow.cli.finetune \
        --spec '{"type": "sft", "settings": {...}, "dataset": "sft_affirmative", "curves": {...}, "state": {...}}' \
        --model results/aligned/tiny/grpo --data results/data/datasets/sft_affirmative \
        --eval-data harmful=results/data/datasets/eval_harmful benign=... task=... \
        --checkpoints results/checkpoints/finetuned/tiny/grpo/sft-affirmative/seed0 \
        --out results/finetuned/tiny/grpo/sft-affirmative/seed0

Curves (refusal, helpfulness, task accuracy, KL to the aligned model along the fine-tune) are recorded
next to the checkpoints, so a resumed job keeps its earlier points, and copied to <out>/curves.json.
"""

import json
import random
from pathlib import Path

from ..base_model import load_model_and_tokenizer
from ..curves import CurveCallback
from ..data.loaders import read_dataset
from ..devices import check_devices
from ..prompts import truncate_prompts
from ..tracking import MlflowMetricsCallback, ProgressCallback
from ..train import policy_config, remove_checkpoints, run_policy_optimisation, run_sft, sft_config
from .common import is_main_process, keep_checkpoints, log_source, named_paths, parser, setup_logging, tracked_job


def curve_sets(spec: dict, eval_dirs: dict[str, str], tokenizer) -> dict:
    """A fixed, seeded subset of each evaluation set, small enough to evaluate every few steps."""
    n = spec["curves"]["n_prompts"]
    sets = {}
    for name, directory in eval_dirs.items():
        records = read_dataset(directory)
        records = random.Random(0).sample(records, n) if len(records) > n else records
        sets[name] = truncate_prompts(records, tokenizer, spec.get("max_prompt_length"))[0]
    return sets


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="the aligned model (also the KL reference)")
    p.add_argument("--data", required=True, help="the regime's dataset folder")
    p.add_argument("--eval-data", nargs="+", required=True, metavar="SET=DIR", help="evaluation sets for the curves")
    p.add_argument("--checkpoints", required=True)
    p.add_argument("--defence-data", nargs="*", default=[], metavar="DEFENCE=DIR",
                   help="the regime's defence datasets (replay=DIR, lisa=DIR: frpo_workflow.defences)")
    args = p.parse_args(argv)
    log = setup_logging()
    eval_dirs = named_paths(args.eval_data)
    defence_dirs = named_paths(args.defence_data) if args.defence_data else {}
    inputs = {"model": args.model, "data": args.data, **{f"eval_{k}": v for k, v in eval_dirs.items()},
              **{f"defence_{k}": v for k, v in defence_dirs.items()}}
    with tracked_job(args, inputs=inputs) as (run, spec, out, extra):
        records = read_dataset(args.data)
        log_source(run, args.data, spec["dataset"], "training")
        curves = spec["curves"]
        device = check_devices()
        # The KL reference sits on this rank's device, next to the model the curves evaluate.
        reference, tokenizer = load_model_and_tokenizer(
            args.model, dtype="bfloat16" if device.startswith("cuda") else "float32")
        reference.to(device)
        curve_path = Path(args.checkpoints) / "curves.json"
        curve_cb = CurveCallback(tokenizer, curve_sets(spec, eval_dirs, tokenizer), curve_path, curves["every"],
                                 ref_model=reference, max_new_tokens=curves["max_new_tokens"],
                                 kl_samples=curves["n_prompts"], seed=0, metrics=spec["metrics"],
                                 sampled=spec.get("sampled"))
        callbacks = [curve_cb, MlflowMetricsCallback(run), ProgressCallback()]
        if spec["type"] == "sft":
            cfg = sft_config(spec["settings"], where=f"finetune regime {spec['state']['regime']}")
            defence_records = {name: read_dataset(directory) for name, directory in defence_dirs.items()}
            summary = run_sft(args.model, records, cfg, out, args.checkpoints, callbacks=callbacks,
                              defence_records=defence_records, ref_model=reference)  # the KL defence's reference
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
    if is_main_process() and not keep_checkpoints(args):  # the output is complete: the resume copies can go
        remove_checkpoints(args.checkpoints)


if __name__ == "__main__":
    main()
