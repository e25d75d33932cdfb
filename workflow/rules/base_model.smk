# Stage "base_model": the built-in tiny model (trained here), or a local/hub model recorded by reference on
# the submitting host (hub downloads need its network), the hub models that judges load, and in a rehearsal
# the stand-ins of every model and judge (frpo_workflow.rehearsal).


rule base_model:
    wildcard_constraints:
        model=alternation(TINY_MODELS),
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
        # A tiny model needs no hub; a hub model is looked up (and fetched) on the submitting host. Offline as
        # every other model job, a tiny model's job shares their warm-start server (same environment).
        hub_offline=lambda wc: int(wc.model in TINY_MODELS),
    shell:
        "HF_HUB_OFFLINE={params.hub_offline} FRPO_GPUS={resources.gpu} OMP_NUM_THREADS={threads} $FRPO_PYTHON -m frpo_workflow.cli.base_model --spec {params.spec:q} --job {params.job:q}"
        f" {{params.data}} --out {{output}} > {{log}} 2>&1 # code {code('cli.base_model')}"


use rule base_model as base_model_reference with:
    wildcard_constraints:
        model=alternation(REFERENCED_MODELS),
    localrule: True


rule hub_model:
    output:
        out("hub_models", "{repo}.json"),
    log:
        side("logs", "hub_models/{repo}", ".log"),
    localrule: True
    conda:
        "../../envs/train.yaml"
    params:
        repo=lambda wc: plan.hub_repo(wc.repo)[0],
        revision=lambda wc: plan.hub_repo(wc.repo)[1] or "",
    shell:
        "python -m frpo_workflow.cli.hub_model --repo {params.repo} --revision '{params.revision}' --out {output}"
        f" > {{log}} 2>&1 # code {code('cli.hub_model')}"


if REHEARSAL:

    rule stand_in:
        """A rehearsal's stand-in for a model or judge: random weights of its class, its own tokenizer."""
        wildcard_constraints:
            stand_in=alternation(REHEARSAL["stand_ins"]),
        output:
            directory(out(rehearsal.STAND_INS, "{stand_in}")),
        log:
            side("logs", f"{rehearsal.STAND_INS}/{{stand_in}}", ".log"),
        localrule: True
        conda:
            "../../envs/train.yaml"
        params:
            source=lambda wc: REHEARSAL["stand_ins"][wc.stand_in]["source"],
            revision=lambda wc: REHEARSAL["stand_ins"][wc.stand_in]["revision"] or "",
            sizes=as_json({k: config["rehearsal"][k] for k in ("hidden_size", "num_layers", "num_heads",
                                                               "intermediate_size")}),
        shell:
            "python -m frpo_workflow.cli.stand_in --source {params.source:q} --revision '{params.revision}'"
            f" --sizes {{params.sizes:q}} --out {{output}} > {{log}} 2>&1 # code {code('cli.stand_in')}"
