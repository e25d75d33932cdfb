"""FRPO study: base model -> alignment sweep (GRPO, FRPO-λ) -> downstream fine-tunes -> evaluation -> report.

Output paths read as lineage (see workflow/src/frpo_workflow/paths.py):
    results/base_model/{model}
    results/aligned/{model}/{method}                       method = grpo | frpo-l<λ>
    results/finetuned/{model}/{method}/{regime}/seed{seed}
    results/eval/<any state above>/metrics.json
    results/report/
Logs, benchmarks and checkpoints mirror these paths under results/{logs,benchmarks,checkpoints}/.
"""

from snakemake.utils import min_version, validate

min_version("9.0")


# ---- configuration -------------------------------------------------------------------------
configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


# ---- stages --------------------------------------------------------------------------------
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base_model.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# ---- targets -------------------------------------------------------------------------------
rule all:
    input:
        final_outputs(),
    default_target: True
