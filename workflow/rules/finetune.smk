# Stage "finetune": every downstream regime (SFT or RL) and seed on every aligned model, with curves.


rule finetune:
    input:
        model=rules.align.output[0],
        judges=finetune_hub_models,
        data=regime_dataset_dir,
        curve_sets=list(curve_set_dirs().values()),
        defence_data=lambda wc: list(defence_dataset_dirs(wc).values()),
    output:
        finetuned_output(),
    log:
        side("logs", paths.FINETUNED, ".log"),
    benchmark:
        side("benchmarks", paths.FINETUNED, ".tsv")
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
        spec=finetune_spec,
        job=lambda wc: job_json("finetune", wc),
        launch=launcher(),
        checkpoints=side("checkpoints", paths.FINETUNED),
        curve_sets=named_dirs("--eval-data", curve_set_dirs()),
        defence_data=defence_data_option,
    shell:
        "HF_HUB_OFFLINE=1 FRPO_GPUS={resources.gpu} OMP_NUM_THREADS={threads} {params.launch} -m frpo_workflow.cli.finetune --spec {params.spec:q}"
        " --job {params.job:q} --model {input.model} --data {input.data} {params.curve_sets} {params.defence_data} --checkpoints {params.checkpoints}"
        f" --out {{output}} > {{log}} 2>&1 || {{{{ grep -h 'JOB FAILED:' {{log}} | tail -1 >> {{log}}; exit 1; }}}} # code {code('cli.finetune')}"
