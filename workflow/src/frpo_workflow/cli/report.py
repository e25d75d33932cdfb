"""CLI of the report stage: summary tables (CSV, Markdown) and plots from every metrics.json/curves.json.

    python -m frpo_workflow.cli.report --metrics results/eval/**/metrics.json \
        --finetuned results/finetuned/*/*/*/seed* --out results/report
"""

from pathlib import Path

from ..plots import plot_refusal_curves, plot_safety_vs_lambda
from ..report import collect, write_summary
from .common import parser, setup_logging, tracked_job


def main(argv=None) -> None:
    p = parser(__doc__)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--finetuned", nargs="*", default=[], help="fine-tuned state folders (each has curves.json)")
    args = p.parse_args(argv)
    log = setup_logging()
    curves = [str(Path(d) / "curves.json") for d in args.finetuned]
    # The files read, not the state folders: hashing fine-tuned models for provenance would cost minutes.
    # Each file's folder holds the provenance.json naming the run that wrote it (the run's lineage).
    inputs = {path: path for path in [*args.metrics, *curves]}
    with tracked_job(args, inputs=inputs, nest=False) as (run, spec, out, extra):
        df = collect(args.metrics)
        csv, md = write_summary(df, out)
        pngs = [plot_safety_vs_lambda(df, out / "safety_vs_lambda.png")]
        if curves:
            pngs.append(plot_refusal_curves(curves, out / "refusal_curves.png"))
        for path in (csv, md, *pngs):
            run.log_artifact(str(path))
        extra["states"] = len(df)
        log.info("report: %d states -> %s", len(df), out)


if __name__ == "__main__":
    main()
