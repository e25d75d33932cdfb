"""CLI of the report stage: tables (CSV, Markdown) and plots from every metrics.json and curves.json.

    python -m frpo_workflow.cli.report --job '{}' --out results/report \
        --spec '{"metrics": {...evaluate.metrics}, "sampled": {...evaluate.sampled}, "kl_levels": [0.5, 1, 2]}' \
        --metrics results/eval/**/metrics.json --curves results/eval/finetuned/**/curves.json

Writes summary, safety_at_kl, metrics_at_kl and alignment_cost (.csv and .md); refusal_vs_kl,
refusal_vs_task, refusal_curves, safety_vs_lambda and task_retained (.png); and for every metric and sampled
twin (`ReportSpec.variants`) metrics/<metric>_curves.png and metrics/<metric>_at_kl.png (`metric_outputs`); with
paired comparisons (report.comparisons, frpo_workflow.paired) paired, paired_at_kl, mechanism and at_task (.csv and
.md), primary.png (the forest plot of paired differences) and paired_vs_kl.png.
"""

import json
from pathlib import Path

from ..plots import (plot_metric_at_kl, plot_metric_curves, plot_refusal_curves, plot_safety_against,
                     plot_safety_vs_lambda, plot_task_retained)
from ..paired import (PairedSpec, endpoint_table, plot_forest, plot_paired_vs_kl, write_at_task, write_mechanism,
                      write_paired)
from ..report import KL, ReportSpec, collect, load_curves
from ..tables import metrics_at_kl, write_alignment_cost, write_metrics_at_kl, write_safety_at_kl, write_summary
from .. import arms, rehearsal
from .common import parser, setup_logging, tracked_job

# The figures each metric gets, under the report's metrics/ folder (workflow/rules/report.smk declares them).
METRIC_FIGURES = ("curves", "at_kl")


def metric_outputs(metric: str) -> dict[str, str]:
    """A metric's figures, relative to the report folder: {"curves": "metrics/<metric>_curves.png", ...}."""
    return {kind: f"metrics/{metric}_{kind}.png" for kind in METRIC_FIGURES}


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
                        plot_refusal_curves(points, spec, out / "refusal_curves.png"),
                        *write_metrics_at_kl(points, spec, out),
                        plot_task_retained(points, spec, out / "task_retained.png")]
            paired_spec = PairedSpec.from_json(spec_json)
            if paired_spec:  # the study's pre-registered comparisons (report.endpoint, report.comparisons)
                written += [*write_paired(points, paired_spec, spec, out),
                            *write_mechanism(states, points, paired_spec, spec, out),
                            *write_at_task(states, points, paired_spec, spec, out),
                            plot_forest(endpoint_table(points, paired_spec), paired_spec, out / "primary.png"),
                            plot_paired_vs_kl(points, paired_spec, out / "paired_vs_kl.png")]
            levels = metrics_at_kl(points, spec)
            for metric in spec.variants:
                figures = {kind: out / Path(path) for kind, path in metric_outputs(metric).items()}
                written += [plot_metric_curves(points, spec, metric, figures["curves"]),
                            plot_metric_at_kl(levels, spec, metric, figures["at_kl"])]
        differences = arms.study_differences([json.loads(Path(f).read_text()) for f in args.metrics],
                                             spec.baselines[0], spec_json.get("intended_differences", []))
        if differences:  # a comparison of arms that differ in more than the method: flagged atop the summary
            log.warning("arms differ beyond the method:\n  %s", "\n  ".join(differences))
            flag = ["> **WARNING: the compared arms differ in more than the method** (not declared in "
                    "`report.intended_differences`); their comparison mixes both:", ">",
                    *[f"> - {line}" for line in differences], ""]
            summary = out / "summary.md"
            summary.write_text("\n".join(flag) + "\n" + summary.read_text())
        extra["arm_differences"] = differences
        if rehearsal.from_environment() is not None:  # a rehearsal fails where the real run would be wrong
            problems = rehearsal.report_verdict(args.metrics, spec_json["metrics"], out / "summary.md")
            if problems:
                raise RuntimeError("the rehearsal found what would make the real run wrong:\n  "
                                   + "\n  ".join(problems))
        for path in written:
            run.log_artifact(str(path))
        extra["states"] = len(states)
        log.info("report: %d states -> %s", len(states), out)


if __name__ == "__main__":
    main()
