# Stage "report": tables and plots over every evaluated state and every fine-tune's curves, comparing
# methods at equal KL to the aligned model and at equal downstream task score (frpo_workflow.tables, plots).
# Its spec keeps evaluate.metrics in config order (json.dumps, not the key-sorted as_json): the safety metric
# is the first on the harmful set, the task metric the first on the task set.
# Every metric (and sampled twin) gets two figures under report/metrics/ (frpo_workflow.cli.report's
# metric_outputs: <metric>_curves.png, <metric>_at_kl.png), shown in the HTML report under "Metrics", one
# subcategory per metric.

# evaluate.metrics in config order, each followed by its `<name>_sampled` twin where it is sampled (the
# report's ReportSpec.variants), and what each of a metric's figures shows.
REPORT_METRICS = [
    variant
    for metric in config["evaluate"]["metrics"]
    for variant in [metric] + ([f"{metric}_sampled"] if config["evaluate"]["sampled"].get("k", 0)
                               and metric in config["evaluate"]["sampled"].get("metrics", []) else [])
]
METRIC_FIGURES = {"curves": "along the fine-tunes", "at_kl": "at equal KL"}
# A study with paired comparisons (report.comparisons; frpo_workflow.paired) gets their tables and figures.
PAIRED = bool(config["report"].get("comparisons"))
PAIRED_TABLES = {"paired": "paired.rst", "paired_at_kl": "paired_at_kl.rst", "mechanism": "mechanism.rst",
                 "at_task": "at_task.rst"}
PAIRED_FIGURES = {"primary": "primary.rst", "paired_vs_kl": "paired_vs_kl.rst"}


rule report:
    input:
        metrics=all_metrics(),
        curves=all_curves(),
    output:
        md=report(out(paths.REPORT, "summary.md"), caption="../report/summary.rst", category="Tables"),
        csv=out(paths.REPORT, "summary.csv"),
        kl_md=report(out(paths.REPORT, "safety_at_kl.md"), caption="../report/safety_at_kl.rst", category="Tables"),
        kl_csv=out(paths.REPORT, "safety_at_kl.csv"),
        cost_md=report(out(paths.REPORT, "alignment_cost.md"), caption="../report/alignment_cost.rst",
                       category="Tables"),
        cost_csv=out(paths.REPORT, "alignment_cost.csv"),
        vs_kl=report(out(paths.REPORT, "refusal_vs_kl.png"), caption="../report/refusal_vs_kl.rst",
                     category="Plots"),
        vs_task=report(out(paths.REPORT, "refusal_vs_task.png"), caption="../report/refusal_vs_task.rst",
                       category="Plots"),
        curves=report(out(paths.REPORT, "refusal_curves.png"), caption="../report/refusal_curves.rst",
                      category="Plots"),
        safety=report(out(paths.REPORT, "safety_vs_lambda.png"), caption="../report/safety_vs_lambda.rst",
                      category="Plots"),
        metrics_md=report(out(paths.REPORT, "metrics_at_kl.md"), caption="../report/metrics_at_kl.rst",
                          category="Tables"),
        metrics_csv=out(paths.REPORT, "metrics_at_kl.csv"),
        retained=report(out(paths.REPORT, "task_retained.png"), caption="../report/task_retained.rst",
                        category="Plots"),
        **{
            f"{name}_{ext}": (report(out(paths.REPORT, f"{name}.md"), caption=f"../report/{caption}", category="Paired comparisons")
                              if ext == "md" else out(paths.REPORT, f"{name}.csv"))
            for name, caption in (PAIRED_TABLES.items() if PAIRED else [])
            for ext in ("md", "csv")
        },
        **{
            name: report(out(paths.REPORT, f"{name}.png"), caption=f"../report/{caption}", category="Paired comparisons")
            for name, caption in (PAIRED_FIGURES.items() if PAIRED else [])
        },
        **{
            f"{kind}__{i}": report(out(paths.REPORT, "metrics", f"{metric}_{kind}.png"),
                                   caption=f"../report/metric_{kind}.rst", category="Metrics", subcategory=metric,
                                   labels={"metric": metric, "figure": shows})
            for i, metric in enumerate(REPORT_METRICS)
            for kind, shows in METRIC_FIGURES.items()
        },
    log:
        side("logs", paths.REPORT, ".log"),
    benchmark:
        side("benchmarks", paths.REPORT, ".tsv")
    threads: res("light", "threads")
    resources:
        runtime=res("light", "runtime"),
        mem_mb=res("light", "mem_mb"),
        cpus_per_task=res("light", "cpus_per_task"),
        slurm_partition=res("light", "slurm_partition"),
    conda:
        "../../envs/report.yaml"
    params:
        job=lambda wc: job_json("report", wc),
        spec=lambda wc: json.dumps({"metrics": config["evaluate"]["metrics"], "sampled": config["evaluate"]["sampled"],
                                    "kl_levels": config["report"]["kl_levels"],  # a list, or "auto"
                                    "baselines": config["report"]["baselines"],
                                    "intended_differences": config["report"]["intended_differences"],
                                    "endpoint": config["report"].get("endpoint"),
                                    "comparisons": config["report"].get("comparisons", []),
                                    "alpha": config["report"].get("alpha", 0.05)}),
        out=lambda wc, output: os.path.dirname(output.md),
    shell:
        "HF_HUB_OFFLINE=1 $FRPO_PYTHON -m frpo_workflow.cli.report --spec {params.spec:q} --job {params.job:q} --metrics {input.metrics}"
        f" --curves {{input.curves}} --out {{params.out}} > {{log}} 2>&1 # code {code('cli.report')}"
