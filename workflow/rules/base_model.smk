# Stage "base_model": the built-in tiny model (trained here), or a local/hub model recorded by reference.


rule base_model:
    input:
        unpack(base_model_inputs),
    output:
        directory(out(paths.BASE)),
    log:
        side("logs", paths.BASE, ".log"),
    benchmark:
        side("benchmarks", paths.BASE, ".tsv")
    threads: res("base_model", "threads")
    resources:
        runtime=res("base_model", "runtime"),
        mem_mb=res("base_model", "mem_mb"),
        gpu=res("base_model", "gpu"),
        cpus_per_task=res("base_model", "cpus_per_task"),
        slurm_partition=res("base_model", "slurm_partition"),
    conda:
        "../../envs/train.yaml"
    params:
        spec=base_model_spec,
        job=lambda wc: job_json("base_model", wc),
        data=lambda wc, input: f"--data {input.data}" if "data" in input.keys() else "",
    shell:
        "FRPO_GPUS={resources.gpu} OMP_NUM_THREADS={threads} python -m frpo_workflow.cli.base_model --spec {params.spec:q} --job {params.job:q}"
        f" {{params.data}} --out {{output}} > {{log}} 2>&1 # code {code('cli.base_model')}"
