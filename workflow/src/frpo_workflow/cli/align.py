"""CLI of the align stage: GRPO or FRPO alignment of a base model (launched with accelerate).

    accelerate launch --config_file workflow/accelerate/cpu.yaml -m frpo_workflow.cli.align \
        --spec '{"settings": {...}, "dataset": "align"}' --model results/base_model/tiny \
        --data results/data/datasets/align \
        --checkpoints results/checkpoints/aligned/tiny/frpo-l1 --out results/aligned/tiny/frpo-l1
"""

import json

from ..data.loaders import read_dataset
from ..devices import check_devices
from ..tracking import MlflowMetricsCallback, ProgressCallback
from ..train import policy_config, remove_checkpoints, run_policy_optimisation
from .common import is_main_process, keep_checkpoints, log_source, parser, setup_logging, tracked_job


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--checkpoints", required=True)
    args = p.parse_args(argv)
    log = setup_logging()
    check_devices()  # fail before any work when the job's GPUs are not there
    with tracked_job(args, inputs={"model": args.model, "data": args.data}) as (run, spec, out, extra):
        cfg = policy_config(spec["settings"], where="align settings")
        records = read_dataset(args.data)
        log_source(run, args.data, spec["dataset"], "training")
        summary = run_policy_optimisation(args.model, records, cfg, out, args.checkpoints,
                                          callbacks=[MlflowMetricsCallback(run), ProgressCallback()])
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        extra["train"] = {k: v for k, v in summary.items() if k != "log_history"}
        run.log_metrics({"prompts_truncated": summary["prompts_truncated"]})
        log.info("aligned with %s in %.1fs", cfg.method, summary["train_runtime_s"] or 0)
    if is_main_process() and not keep_checkpoints(args):  # the output is complete: the resume copies can go
        remove_checkpoints(args.checkpoints)


if __name__ == "__main__":
    main()
