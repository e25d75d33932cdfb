# Stage "align": GRPO and FRPO (one job per λ and alignment seed) from each base model; multi-process topologies launch with accelerate.


rule align:
    input:
        model=rules.base_model.output[0],
        judges=align_hub_models,
        data=align_dataset_dir,
    output:
        directory(out(paths.ALIGNED)),
    log:
        side("logs", paths.ALIGNED, ".log"),
    benchmark:
        side("benchmarks", paths.ALIGNED, ".tsv")
    threads: res("train", "threads")
    resources:
        runtime=res("train", "runtime"),
        mem_mb=res("train", "mem_mb"),
        gpu=res("train", "gpu"),
        cpus_per_task=res("train", "cpus_per_task"),
        slurm_partition=res("train", "slurm_partition"),
    conda:
        "../../envs/train.yaml"
    params:
        spec=align_spec,
        job=lambda wc: job_json("align", wc),
        launch=launcher(),
        checkpoints=side("checkpoints", paths.ALIGNED),
    shell:
        "HF_HUB_OFFLINE=1 FRPO_GPUS={resources.gpu} OMP_NUM_THREADS={threads} {params.launch} -m frpo_workflow.cli.align --spec {params.spec:q} --job {params.job:q}"
        f" --model {{input.model}} --data {{input.data}} --checkpoints {{params.checkpoints}} --out {{output}} > {{log}} 2>&1 || {{{{ grep -h 'JOB FAILED:' {{log}} | tail -1 >> {{log}}; exit 1; }}}} # code {code('cli.align')}"
