"""Output-path conventions: every artifact's path reads as its lineage.

    {results}/data/toy_world/                                the generated toy world (JSONL splits)
    {results}/data/datasets/{dataset}/records.jsonl          every dataset the study reads, as records
    {results}/base_model/{model}/                            base model (or model_ref.json)
    {results}/aligned/{model}/{method}/seed{align_seed}/     aligned model, method = grpo | frpo-l<λ>
    {results}/finetuned/{model}/{method}/seed{align_seed}/{regime}/seed{seed}/
                                                             downstream fine-tune (+ curves.json); the first
                                                             seed is the alignment's, the second the regime's
    {results}/eval/<state>/metrics.json                      evaluation of any of the states above
    {results}/report/                                        summary tables, plots
Logs, benchmarks and checkpoints mirror the state path under logs/, benchmarks/, checkpoints/.
Checkpoints live outside the declared outputs because Snakemake deletes a failed job's outputs,
and a resumable checkpoint must survive the failure.
"""

from __future__ import annotations

from pathlib import PurePosixPath

TOY_WORLD = "data/toy_world"
DATASET = "data/datasets/{dataset}"
RECORDS = "records.jsonl"
BASE = "base_model/{model}"
ALIGNED = "aligned/{model}/{method}/seed{align_seed}"
FINETUNED = "finetuned/{model}/{method}/seed{align_seed}/{regime}/seed{seed}"
REPORT = "report"


def under(results: str, *parts: str) -> str:
    """A path below the results folder, joined without string concatenation."""
    return str(PurePosixPath(results, *parts))


def evaluation(state: str) -> str:
    """Evaluation folder of a model state (a pattern such as ALIGNED)."""
    return str(PurePosixPath("eval", state))


def mirror(kind: str, state: str, suffix: str = "") -> str:
    """logs/<state>.log, benchmarks/<state>.tsv, checkpoints/<state>: per-job side files."""
    return str(PurePosixPath(kind, state + suffix))
