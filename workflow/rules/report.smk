# Stage "report": summary tables and plots over every evaluated state and every fine-tune's curves.


rule report:
    input:
        metrics=all_metrics(),
        curves=all_curves(),
    output:
        md=report(out(paths.REPORT, "summary.md"), caption="../report/summary.rst", category="Summary"),
        csv=out(paths.REPORT, "summary.csv"),
        safety=report(out(paths.REPORT, "safety_vs_lambda.png"), caption="../report/safety_vs_lambda.rst",
                      category="Plots"),
        curves=report(out(paths.REPORT, "refusal_curves.png"), caption="../report/refusal_curves.rst",
                      category="Plots"),
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
        out=lambda wc, output: os.path.dirname(output.md),
        finetuned=lambda wc, input: [os.path.dirname(path) for path in input.curves],
    shell:
        "python -m frpo_workflow.cli.report --spec '{{}}' --job {params.job:q} --metrics {input.metrics}"
        f" --finetuned {{params.finetuned}} --out {{params.out}} > {{log}} 2>&1 # code {code('cli.report')}"
