# Stage "evaluate": every model state (base, aligned, fine-tuned) is generated from, judged, and compared
# by KL with the state it came from. Only evaluate.* settings enter these params, so changing them
# reruns evaluation and report and nothing else.


rule evaluate_base:
    input:
        model=rules.base_model.output[0],
        eval_sets=list(eval_set_dirs().values()),
        judges=evaluate_hub_models,
    output:
        metrics=out(paths.evaluation(paths.BASE), "metrics.json"),
        generations=out(paths.evaluation(paths.BASE), "generations.jsonl"),
    log:
        side("logs", paths.evaluation(paths.BASE), ".log"),
    benchmark:
        side("benchmarks", paths.evaluation(paths.BASE), ".tsv")
    threads: res("evaluate", "threads")
    resources:
        runtime=res("evaluate", "runtime"),
        mem_mb=res("evaluate", "mem_mb"),
        gpu=res("evaluate", "gpu"),
        cpus_per_task=res("evaluate", "cpus_per_task"),
        slurm_partition=res("evaluate", "slurm_partition"),
    conda:
        "../../envs/eval.yaml"
    params:
        spec=evaluate_spec("base"),
        job=lambda wc: job_json("evaluate_base", wc),
        reference="",
        out=lambda wc, output: os.path.dirname(output.metrics),
        eval_sets=named_dirs("--eval-data", eval_set_dirs()),
    shell:
        "HF_HUB_OFFLINE=1 FRPO_GPUS={resources.gpu} OMP_NUM_THREADS={threads} $FRPO_PYTHON -m frpo_workflow.cli.evaluate --spec {params.spec:q} --job {params.job:q}"
        f" --model {{input.model}} {{params.reference}} {{params.eval_sets}} --out {{params.out}} > {{log}} 2>&1 # code {code('cli.evaluate')}"


use rule evaluate_base as evaluate_aligned with:
    input:
        model=rules.align.output[0],
        reference=rules.base_model.output[0],
        eval_sets=list(eval_set_dirs().values()),
        judges=evaluate_hub_models,
    output:
        metrics=out(paths.evaluation(paths.ALIGNED), "metrics.json"),
        generations=out(paths.evaluation(paths.ALIGNED), "generations.jsonl"),
    log:
        side("logs", paths.evaluation(paths.ALIGNED), ".log"),
    benchmark:
        side("benchmarks", paths.evaluation(paths.ALIGNED), ".tsv")
    params:
        spec=evaluate_spec("aligned"),
        job=lambda wc: job_json("evaluate_aligned", wc),
        reference=lambda wc, input: f"--reference {input.reference}",
        out=lambda wc, output: os.path.dirname(output.metrics),


use rule evaluate_base as evaluate_finetuned with:
    input:
        model=rules.finetune.output[0],
        reference=rules.align.output[0],
        eval_sets=list(eval_set_dirs().values()),
        judges=evaluate_hub_models,
    output:
        metrics=out(paths.evaluation(paths.FINETUNED), "metrics.json"),
        generations=out(paths.evaluation(paths.FINETUNED), "generations.jsonl"),
        curves=out(paths.evaluation(paths.FINETUNED), "curves.json"),  # kept when the weights are not
    log:
        side("logs", paths.evaluation(paths.FINETUNED), ".log"),
    benchmark:
        side("benchmarks", paths.evaluation(paths.FINETUNED), ".tsv")
    params:
        spec=evaluate_spec("finetuned"),
        job=lambda wc: job_json("evaluate_finetuned", wc),
        reference=lambda wc, input: f"--reference {input.reference}",
        out=lambda wc, output: os.path.dirname(output.metrics),
