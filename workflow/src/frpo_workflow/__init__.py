"""frpo_workflow: the library behind the FRPO Snakemake workflow.

One module per job: `loss` (the FRPO objective), `trainer` (GRPO/FRPO/SFT on TRL), `base_model`
(tokenizer and tiny model, or a hub/local model), `data` (toy world and loaders), `judges` (reward and
judge registry), `evaluate` (generation, judging, KL), `tracking` (MLflow), `provenance`, `report`,
`warm_start` (jobs forked from a preloaded interpreter), and `cli/` (one thin command per workflow stage).
"""

__version__ = "0.1.0"
