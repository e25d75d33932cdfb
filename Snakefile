"""FRPO study: data -> base model -> alignment sweep (GRPO, FRPO-λ) -> downstream fine-tunes -> evaluation -> report.

Output paths read as lineage (see workflow/src/frpo_workflow/paths.py):
    results/data/datasets/{dataset}                        every dataset the study reads, as records
    results/base_model/{model}
    results/aligned/{model}/{method}/seed{align_seed}      method = grpo | frpo-l<λ>, one per alignment seed
    results/finetuned/{model}/{method}/seed{align_seed}/{regime}/seed{seed}   one per downstream seed
    results/eval/<any state above>/metrics.json
    results/report/
Logs, benchmarks and checkpoints mirror these paths under results/{logs,benchmarks,checkpoints}/.
"""

import copy
import json
import os
import sys

from snakemake.common.configfile import load_configfile
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from frpo_workflow import plan, rehearsal

min_version("9.0")


# ---- configuration -------------------------------------------------------------------------
# A preset (`standalone: true`) is a whole study; any other --configfile is an overlay over config.yaml.
# Overlays follow one rule over either: an entry under datasets: naming its `type` (models: its `source`)
# replaces the one before it whole (plan.apply_overlays; Snakemake itself merges key by key).
# Decided from the command-line config alone, so every job Snakemake spawns (SLURM jobs re-read this
# file with the same --configfiles, but without --replace-workflow-config) builds the driver's config.
if not config.get("standalone"):

    configfile: "config.yaml"


config = plan.apply_overlays(config, [*map(load_configfile, workflow.overwrite_configfiles),
                                      dict(workflow.config_settings.config)])


# `--config rehearse=true` arrives as a string: Snakemake parses only numbers on its command line.
config["rehearse"] = rehearsal.switch(config.get("rehearse", False), "rehearse")
try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError:  # validate() dumps the whole schema; say what is wrong, one line per key
    raise WorkflowError(plan.schema_errors(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")) from None
# JSON Schema takes 1.0 for an integer (align.seeds: [1.0] would name a folder seed1.0); this workflow does not.
if errors := plan.schema_errors(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml", strict=True):
    raise WorkflowError(errors)


# A rehearsal (`--config rehearse=true`) is the same study on CPU, on random stand-ins of its models, in its own
# results folder: what it shrinks is printed here and recorded in every job's provenance ($FRPO_REHEARSAL).
REHEARSAL = None
if config["rehearse"]:
    config, REHEARSAL = rehearsal.rehearsal_config(config)
    os.environ[rehearsal.ENV] = json.dumps(REHEARSAL["changes"])
    if workflow.is_main_process:
        print(rehearsal.announce(REHEARSAL), file=sys.stderr)


report: "workflow/report/workflow.rst"


# ---- stages --------------------------------------------------------------------------------
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/base_model.smk"
include: "workflow/rules/align.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/verify.smk"


# ---- targets -------------------------------------------------------------------------------
rule all:
    input:
        final_outputs(),
    default_target: True
