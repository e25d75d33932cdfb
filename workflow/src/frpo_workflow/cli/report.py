"""CLI of the report stage: tables (CSV, Markdown) and plots from every metrics.json and curves.json.

    python -m frpo_workflow.cli.report --job '{}' --out results/report \
        --spec '{"metrics": {...evaluate.metrics}, "sampled": {...evaluate.sampled}, "kl_levels": [0.5, 1, 2]}' \
        --metrics results/eval/**/metrics.json --curves results/eval/finetuned/**/curves.json

Writes summary, safety_at_kl and alignment_cost (.csv and .md) and refusal_vs_kl, refusal_vs_task,
refusal_curves and safety_vs_lambda (.png).
"""

from ..plots import plot_refusal_curves, plot_safety_against, plot_safety_vs_lambda
from ..report import KL, ReportSpec, collect, load_curves
from ..tables import write_alignment_cost, write_safety_at_kl, write_summary
from .common import parser, setup_logging, tracked_job


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--metrics", nargs="+", required=True, help="every state's metrics.json")
    p.add_argument("--curves", nargs="*", default=[], help="every fine-tune's curves.json")
    args = p.parse_args(argv)
    log = setup_logging()
    # The files read, not the state folders: hashing fine-tuned models for provenance would cost minutes.
    # Each file's folder holds the provenance.json naming the run that wrote it (the run's lineage).
    inputs = {path: path for path in [*args.metrics, *args.curves]}
    with tracked_job(args, inputs=inputs, nest=False) as (run, spec_json, out, extra):
        spec = ReportSpec.from_json(spec_json)
        states = collect(args.metrics, spec)
        written = [*write_summary(states, spec, out), *write_alignment_cost(states, spec, out),
                   plot_safety_vs_lambda(states, spec, out / "safety_vs_lambda.png")]
        if args.curves:
            points = load_curves(args.curves, spec)
            written += [*write_safety_at_kl(points, spec, out),
                        plot_safety_against(points, spec, KL, out / "refusal_vs_kl.png"),
                        plot_safety_against(points, spec, spec.task, out / "refusal_vs_task.png"),
                        plot_refusal_curves(points, spec, out / "refusal_curves.png")]
        for path in written:
            run.log_artifact(str(path))
        extra["states"] = len(states)
        log.info("report: %d states -> %s", len(states), out)


if __name__ == "__main__":
    main()
