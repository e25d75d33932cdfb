# Stage "data": the MLflow experiment (created once, before jobs fan out), the toy world, every dataset the
# study reads as records (one job each, on the submitting host: hub downloads need its network), and the
# data check that every model job waits for, so a broken file fails in seconds, before any training.


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


rule toy_world:
    output:
        directory(out(paths.TOY_WORLD)),
    log:
        side("logs", paths.TOY_WORLD, ".log"),
    benchmark:
        side("benchmarks", paths.TOY_WORLD, ".tsv")
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        spec=as_json(config["toy_world"]),
    shell:
        "python -m frpo_workflow.cli.data toy --spec {params.spec:q} --out {output} > {log} 2>&1"


rule dataset:
    input:
        unpack(dataset_inputs),
    output:
        directory(out(paths.DATASET)),
    log:
        side("logs", paths.DATASET, ".log"),
    benchmark:
        side("benchmarks", paths.DATASET, ".tsv")
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        spec=lambda wc: as_json(dataset_spec(wc.dataset)),
        toy=lambda wc, input: f"--toy-world {input.toy_world}" if "toy_world" in input.keys() else "",
    shell:
        "python -m frpo_workflow.cli.data dataset --spec {params.spec:q} {params.toy} --out {output} > {log} 2>&1"


rule data:
    input:
        experiment=rules.tracking_experiment.output,
        datasets=[dataset_dir(name) for name in DATASETS],
    output:
        out(paths.DATA_CHECK),
    log:
        side("logs", paths.DATA_CHECK, ".log"),
    benchmark:
        side("benchmarks", paths.DATA_CHECK, ".tsv")
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        spec=data_check_spec(),
        datasets=named_dirs("--datasets", {name: dataset_dir(name) for name in DATASETS}),
    shell:
        "python -m frpo_workflow.cli.data check --spec {params.spec:q} {params.datasets} --out {output} > {log} 2>&1"
