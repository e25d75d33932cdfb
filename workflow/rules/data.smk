# Stage "data": the MLflow experiment (created once, before jobs fan out), the toy world, and every dataset
# the study reads as records: one job each, on the submitting host (hub downloads need its network), first
# in line (priority), checking its rows and its use in the study, so a broken file fails in seconds.
# Model jobs depend on the datasets they read and nothing else: editing an evaluation file reruns the
# evaluations, not the training. (No gate job that every job waits for: a gate's rerun would rerun
# everything, and Snakemake 9.27 skips jobs behind an ancient() gate whenever the gate reruns.)


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
        "HF_HUB_OFFLINE=1 $FRPO_PYTHON -m frpo_workflow.cli.experiment --name {params.name} --results {params.results}"
        f" --out {{output}} > {{log}} 2>&1 # code {code('cli.experiment')}"


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
        f"python -m frpo_workflow.cli.data toy --spec {{params.spec:q}} --out {{output}} > {{log}} 2>&1 # code {code('cli.data')}"


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
    priority: 50
    conda:
        "../../envs/report.yaml"
    params:
        spec=lambda wc: as_json({"source": dataset_spec(wc.dataset), "usage": plan.dataset_usage(config, wc.dataset)}),
        toy=lambda wc, input: f"--toy-world {input.toy_world}" if "toy_world" in input.keys() else "",
    shell:
        f"python -m frpo_workflow.cli.data dataset --spec {{params.spec:q}} {{params.toy}} --out {{output}} > {{log}} 2>&1 # code {code('cli.data')}"
