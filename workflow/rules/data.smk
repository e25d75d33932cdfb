# Stage "data": the MLflow experiment (created once, before any job fans out) and the toy world.


rule tracking_experiment:
    output:
        out("tracking", "experiment.json"),
    log:
        side("logs", "tracking", ".log"),
    benchmark:
        side("benchmarks", "tracking", ".tsv")
    threads: res("light", "threads")
    resources:
        runtime=res("light", "runtime"),
        mem_mb=res("light", "mem_mb"),
        cpus_per_task=res("light", "cpus_per_task"),
        slurm_partition=res("light", "slurm_partition"),
    conda:
        "../../envs/report.yaml"
    params:
        name=config["run_name"],
        results=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),
    shell:
        "python -m frpo_workflow.cli.experiment --name {params.name} --results {params.results}"
        " --out {output} > {log} 2>&1"


rule data:
    input:
        rules.tracking_experiment.output,
    output:
        directory(out(paths.DATA)),
    log:
        side("logs", paths.DATA, ".log"),
    benchmark:
        side("benchmarks", paths.DATA, ".tsv")
    threads: res("light", "threads")
    resources:
        runtime=res("light", "runtime"),
        mem_mb=res("light", "mem_mb"),
        cpus_per_task=res("light", "cpus_per_task"),
        slurm_partition=res("light", "slurm_partition"),
    conda:
        "../../envs/report.yaml"
    params:
        spec=as_json(config["toy_world"]),
        job=lambda wc: job_json("data", wc),
    shell:
        "python -m frpo_workflow.cli.data --spec {params.spec:q} --job {params.job:q} --out {output} > {log} 2>&1"
