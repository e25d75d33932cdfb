# Shared helpers: config checks, wildcard constraints, paths, per-job settings and resources.
# Settings come from the library's plan module, so each job's params hold only what affects it.

import json
import os
import re

from frpo_workflow import paths, plan

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
plan.check_references(config)

RESULTS = config["results_dir"]
MODELS = list(config["models"])
METHODS = plan.method_keys(config)
REGIMES = list(config["finetune"]["regimes"])
SEEDS = config["finetune"]["seeds"]


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)) if MODELS else "NONE",
    method=r"grpo|frpo-l[0-9.e-]+",
    regime="[A-Za-z0-9_.-]+",
    seed=r"\d+",


def out(*parts):
    """A path under the results folder."""
    return paths.under(RESULTS, *parts)


def side(kind, state, suffix=""):
    """logs/benchmarks/checkpoints path mirroring a state path."""
    return out(paths.mirror(kind, state, suffix))


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def job_json(rule_name, wildcards):
    """Tracking context of a job: experiment, results folder, rule and wildcards (not a rerun trigger)."""
    return as_json({"experiment": config["run_name"], "results_dir": RESULTS, "rule": rule_name,
                    "wildcards": dict(wildcards.items())})


def dataset(name):
    return config["datasets"][name]


def state_record(stage, wildcards):
    """The identity of a model state, written into its metrics.json and curves.json."""
    method = wildcards.get("method")
    return {"stage": stage, "model": wildcards.model, "method": method,
            "lambda": plan.method_lambda(method) if method else None,
            "regime": wildcards.get("regime"), "seed": int(wildcards.seed) if "seed" in wildcards.keys() else None}


def eval_sets():
    return {name: dataset(ds) for name, ds in config["evaluate"]["sets"].items()}


def accelerate_launch(family="train"):
    """The launch prefix of training jobs: accelerate with the configured topology."""
    launch = config["launch"]
    n = launch["num_processes"] or max(1, config["resources"][family]["gpu"])
    cfg = os.path.join(workflow.basedir, "workflow", "accelerate", f"{launch['accelerate_config']}.yaml")
    return f"accelerate launch --config_file {cfg} --num_processes {n} -m"


def res(family, key):
    return config["resources"][family][key]


def final_outputs():
    """The report, which needs every state's evaluation and every fine-tune's curves."""
    return [out(paths.REPORT, "summary.md")]


def all_metrics():
    base = expand(out(paths.evaluation(paths.BASE), "metrics.json"), model=MODELS)
    aligned = expand(out(paths.evaluation(paths.ALIGNED), "metrics.json"), model=MODELS, method=METHODS)
    tuned = expand(out(paths.evaluation(paths.FINETUNED), "metrics.json"),
                   model=MODELS, method=METHODS, regime=REGIMES, seed=SEEDS)
    return base + aligned + tuned


def all_finetunes():
    """Every fine-tuned state's folder (each holds curves.json)."""
    return expand(out(paths.FINETUNED), model=MODELS, method=METHODS, regime=REGIMES, seed=SEEDS)


# ---- per-job settings (params): each job's slice of the config, nothing more ----------------
def base_model_spec(wildcards):
    model = config["models"][wildcards.model]
    corpus = dataset(model["pretrain_dataset"]) if model["source"] == "tiny" else None
    return as_json({"model": model, "corpus": corpus})


def align_spec(wildcards):
    return as_json({"settings": plan.method_settings(config, wildcards.method),
                    "dataset": dataset(config["align"]["dataset"])})


def finetune_spec(wildcards):
    kind, name, settings = plan.regime_settings(config, wildcards.regime, int(wildcards.seed))
    return as_json({"type": kind, "settings": settings, "dataset": dataset(name),
                    "curves": config["finetune"]["curves"], "eval_sets": eval_sets(),
                    "state": state_record("finetuned", wildcards)})


def evaluate_spec(stage):
    def spec(wildcards):
        settings = {k: v for k, v in config["evaluate"].items() if k != "sets"}
        return as_json({**settings, "sets": eval_sets(), "state": state_record(stage, wildcards)})

    return spec
