# Shared helpers: config checks, wildcard constraints, paths, per-job settings and resources.
# Settings come from the library's plan module, so each job's params hold only what affects it.

import json
import os
import re
import sys

from frpo_workflow import data, defences, guard, paths, plan, preflight, provenance

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
plan.check_config(config)
# What the machine lacks (packages, local files), all at once, before any job; jobs re-reading this
# file skip it (the driver checked).
if workflow.is_main_process:
    preflight.run(config, dryrun=getattr(workflow.output_settings, "dryrun", False))
    # Every job watches this process and stops when it is gone, so a killed driver leaves no trainer behind;
    # a run after one that was killed clears the lock and incomplete outputs it left (frpo_workflow/guard.py).
    os.environ[guard.DRIVER_ENV] = guard.driver_identity()
    if not getattr(workflow.output_settings, "dryrun", False):
        guard.recover_driver_state(".", log=lambda line: print(line, file=sys.stderr))
    elif any(stale := guard.stale_state(".")):
        print(f"note: the Snakemake run before this one in this folder was stopped without cleaning up ({stale[1]} "
              f"incomplete output(s)); this dry run may call them incomplete, the real run (the same command "
              f"without -n) clears them and resumes", file=sys.stderr)

RESULTS = config["results_dir"]
DATASETS = plan.used_datasets(config)
MODELS = list(config["models"])
TINY_MODELS = [m for m, spec in config["models"].items() if spec["source"] == "tiny"]
REFERENCED_MODELS = [m for m in MODELS if m not in TINY_MODELS]
METHODS = plan.method_keys(config)
ALIGN_SEEDS = config["align"]["seeds"]
REGIMES = list(config["finetune"]["regimes"])
SEEDS = config["finetune"]["seeds"]


def alternation(names):
    """A wildcard pattern matching exactly `names` (nothing, for none)."""
    return "|".join(map(re.escape, names)) or "(?!x)x"


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    model="|".join(map(re.escape, MODELS)) if MODELS else "NONE",
    method=alternation(METHODS),
    regime="[A-Za-z0-9_.-]+",
    align_seed=r"\d+",
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


def dataset_dir(name):
    """The folder holding dataset `name` as records (written by the `dataset` rule)."""
    return out(paths.DATASET.format(dataset=name))


def dataset_spec(name):
    return plan.dataset_spec(config, name)


def dataset_inputs(wildcards):
    """What a dataset job reads: its local files (so editing one reruns it) and the toy world if needed."""
    spec = dataset_spec(wildcards.dataset)
    inputs = {"files": [str(p) for p in data.local_files(spec)]}
    if data.loaders.reads_toy_world(spec):
        inputs["toy_world"] = out(paths.TOY_WORLD)
    return inputs


def state_record(stage, wildcards):
    """The identity of a model state, written into its metrics.json and curves.json."""
    method = wildcards.get("method")

    def seed(name):
        return int(wildcards[name]) if name in wildcards.keys() else None

    return {"stage": stage, "model": wildcards.model, "method": method,
            "lambda": plan.arm_lambda(config, method) if method else None, "align_seed": seed("align_seed"),
            "regime": wildcards.get("regime"), "seed": seed("seed"),
            **defences.state_labels(config, wildcards.get("regime"))}  # a regime's defence or attack, if any


def eval_set_dirs():
    """{set: dataset folder} of the evaluation sets (harmful, benign, task)."""
    return {name: dataset_dir(ds) for name, ds in config["evaluate"]["sets"].items()}


def curve_sets():
    """{set: dataset} recorded along the fine-tunes: finetune.curves.sets, else the evaluation sets."""
    return config["finetune"]["curves"].get("sets") or config["evaluate"]["sets"]


def curve_set_dirs():
    return {name: dataset_dir(ds) for name, ds in curve_sets().items()}


def named_dirs(option, dirs):
    """A CLI option taking NAME=DIR pairs, e.g. `--eval-data harmful=results/data/datasets/eval_harmful`."""
    return f"{option} " + " ".join(f"{name}={path}" for name, path in dirs.items())


# Where the accelerate configs are, for the shell as $FRPO_ACCELERATE_DIR (set again by every job that
# re-reads this file, on any host): an absolute path in params or in the shell text would rerun every
# training job of a moved or freshly cloned project.
os.environ["FRPO_ACCELERATE_DIR"] = os.path.join(workflow.basedir, "workflow", "accelerate")


# How a stage CLI's interpreter starts, for the shell as $FRPO_PYTHON: with launch.warm_start, forked from
# a local interpreter that has imported torch, transformers, trl and mlflow once (frpo_workflow/warm_start.py).
# An environment variable rather than a param: how a job starts does not change what it computes, so
# switching it reruns nothing.
_python = "python -m frpo_workflow.warm_start" if config["launch"]["warm_start"] else "python"
os.environ["FRPO_PYTHON"] = _python


# How a damaged output's message says to rebuild it (provenance.rebuild_command): this study's --configfile options.
os.environ["FRPO_SNAKEMAKE_OPTIONS"] = " ".join(
    ["--configfile", *(os.path.relpath(f) if not os.path.relpath(f).startswith("..") else str(f)
                       for f in workflow.overwrite_configfiles)] if workflow.overwrite_configfiles else []
) + (" --config rehearse=true" if config.get("rehearse") else "")


envvars:
    "FRPO_ACCELERATE_DIR",
    "FRPO_PYTHON",
    "FRPO_SNAKEMAKE_OPTIONS",


def launcher(family="train"):
    """How a training CLI starts: `accelerate launch --config_file ... --num_processes N`, or as every other
    CLI does ($FRPO_PYTHON) for the one-process CPU topology, where accelerate's launcher adds ~2 s to every
    job and nothing else (train.py sets use_cpu itself)."""
    launch = config["launch"]
    n = launch["num_processes"] or max(1, config["resources"][family]["gpu"])
    if launch["accelerate_config"] == "cpu":
        return "$FRPO_PYTHON"
    return f"accelerate launch --config_file $FRPO_ACCELERATE_DIR/{launch['accelerate_config']}.yaml --num_processes {n}"


def code(module):
    """The hash of the library code a rule's CLI runs (provenance.module_sha256), for a `# code` comment
    at the end of its shell text.

    Snakemake's `code` rerun trigger compares a rule's shell text, so a change to that code reruns the
    rule's jobs; `--rerun-triggers mtime params input software-env` opts out.
    """
    return provenance.module_sha256(module)[:16]


def res(family, key):
    return config["resources"][family][key]


def final_outputs():
    """The report, which needs every state's evaluation and every fine-tune's curves."""
    return [out(paths.REPORT, "summary.md")]


# Each arm at its alignment seeds, each regime on its arms (align.arms, finetune.regimes.<r>.arms; plan.study_states).
ALIGNED_STATES, FINETUNED_STATES = plan.study_states(config)


def all_metrics():
    base = expand(out(paths.evaluation(paths.BASE), "metrics.json"), model=MODELS)
    aligned = [out(paths.evaluation(paths.ALIGNED), "metrics.json").format(model=model, method=m, align_seed=a)
               for model in MODELS for m, a in ALIGNED_STATES]
    tuned = [out(paths.evaluation(paths.FINETUNED), "metrics.json").format(model=model, method=m, align_seed=a,
                                                                          regime=r, seed=s)
             for model in MODELS for m, a, r, s in FINETUNED_STATES]
    return base + aligned + tuned


def all_curves():
    """Every fine-tune's curves, as its evaluation keeps them (the weights may be gone: keep_weights)."""
    return [out(paths.evaluation(paths.FINETUNED), "curves.json").format(model=model, method=m, align_seed=a,
                                                                        regime=r, seed=s)
            for model in MODELS for m, a, r, s in FINETUNED_STATES]


def finetuned_output():
    """The fine-tuned model folder; temp() unless finetune.keep_weights: a 7B full fine-tune is ~15 GB and
    a paper preset makes dozens, each needed only until its evaluation has run."""
    folder = directory(out(paths.FINETUNED))
    return folder if config["finetune"]["keep_weights"] else temp(folder)


# ---- per-job settings (params): each job's slice of the config, nothing more ----------------
def stand_ins(paths):
    """The rehearsal stand-ins among model paths (folders that rule stand_in builds)."""
    root = out(rehearsal.STAND_INS) + "/"
    return [p for p in paths if isinstance(p, str) and p.startswith(root)]


def hub_models(specs):
    """What the judges in `specs` load, to be there before their jobs: the fetch markers of hub models
    (rule hub_model), a rehearsal's stand-ins (rule stand_in)."""
    fetched = [out("hub_models", f"{plan.hub_marker(repo)}.json") for repo in plan.hub_judge_models(specs)]
    return fetched + stand_ins([spec.get("model") for spec in specs or [] if isinstance(spec, dict)])


def metric_judges():
    return [m["judge"] for m in config["evaluate"]["metrics"].values()]


def align_hub_models(wildcards):
    plan.check_state(config, wildcards)  # a target's method and seed are this study's (first input function)
    return hub_models(plan.method_settings(config, wildcards.method).get("rewards"))


def finetune_hub_models(wildcards):
    plan.check_state(config, wildcards)
    return hub_models([*config["finetune"]["regimes"][wildcards.regime].get("rewards", []), *metric_judges()])


def evaluate_hub_models(wildcards):
    plan.check_state(config, wildcards)
    return hub_models(metric_judges())


def base_model_inputs(wildcards):
    model = config["models"][wildcards.model]
    inputs = {"experiment": rules.tracking_experiment.output[0]}  # created once, before runs fan out
    if model["source"] == "tiny":
        inputs["data"] = dataset_dir(model["pretrain_dataset"])
    inputs.update({"stand_in": path for path in stand_ins([model.get("path")])})
    return inputs


def base_model_spec(wildcards):
    model = dict(config["models"][wildcards.model])
    if model["source"] != "tiny":  # the schema fills the tiny model's defaults into every entry
        model.pop("tiny", None), model.pop("pretrain_dataset", None)
    return as_json({"model": model, "corpus": model.get("pretrain_dataset")})


def align_spec(wildcards):
    return as_json({"settings": plan.align_settings(config, wildcards.method, int(wildcards.align_seed)),
                    "dataset": plan.arm_dataset(config, wildcards.method)})


def align_dataset_dir(wildcards):
    """The arm's alignment prompts (align.dataset, or an extra arm's own dataset)."""
    return dataset_dir(plan.arm_dataset(config, wildcards.method))


def regime_dataset_dir(wildcards):
    plan.check_state(config, wildcards)
    return dataset_dir(config["finetune"]["regimes"][wildcards.regime]["dataset"])


def defence_dataset_dirs(wildcards):
    """{defence: dataset folder} of a regime's defence datasets (replay, Lisa's alignment data); none for most."""
    regime = config["finetune"]["regimes"][wildcards.regime]
    return {name: dataset_dir(ds) for name, ds in defences.regime_datasets(regime).items()}


def defence_data_option(wildcards):
    dirs = defence_dataset_dirs(wildcards)
    return named_dirs("--defence-data", dirs) if dirs else ""


def finetune_spec(wildcards):
    kind, name, settings = plan.regime_settings(config, wildcards.regime, int(wildcards.seed))
    curves = {**config["finetune"]["curves"], **config["finetune"]["regimes"][wildcards.regime].get("curves", {})}
    return as_json({"type": kind, "settings": settings, "dataset": name, "curves": curves,
                    "max_prompt_length": config["evaluate"]["max_prompt_length"],
                    "metrics": config["evaluate"]["metrics"], "sampled": config["evaluate"]["sampled"],
                    "state": state_record("finetuned", wildcards)})


def evaluate_spec(stage):
    def spec(wildcards):
        return as_json({**config["evaluate"], "state": state_record(stage, wildcards)})

    return spec
