"""Preflight: what a study needs from the machine, checked at DAG build, before any job runs.

`plan.check_config` checks the config against itself; this checks it against the machine and reports
everything at once: every optional package the config needs (found with `importlib.util.find_spec`,
nothing imported), every local file it reads (data files, local models, local judge models), each with
the config key that names it. Hard failures make one error; what only may go wrong (a gated hub repo,
a harness that will be skipped) makes warning lines.

    report = check(config)       # Report(missing_files, missing_packages, warnings)
    run(config, dryrun=False)    # warnings on stderr; raises PreflightError naming every hard failure

A dry run (`snakemake -n`) only warns about missing packages: it runs nothing, and planning a study on a
login host that lacks the GPU stack is fine. Missing files fail a dry run too (Snakemake's own dry run
would stop at the first one).

What it cannot see: the SLURM executor plugin. Snakemake checks `--executor slurm` (or the profile's
`executor: slurm`) against its installed plugins while parsing the command line, before the Snakefile
is read, and stops with "invalid choice: 'slurm'"; the cure is `pip install -e '.[slurm]'`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import plan
from .data.sources import FILE_TYPES
from .harness import PACKAGES as HARNESS_PACKAGES

# Hub repos known to be gated (the terms must be accepted on the hub, and downloads need a token):
# an entry ending in "/" covers the whole organisation. Only what the presets use or may switch to.
GATED = (
    "meta-llama/",            # every Llama model (Meta's license)
    "mistralai/",             # every Mistral model, since 2024
    "allenai/wildjailbreak",  # AI2's responsible-use terms (the safety presets' hub alternative, align_hub)
)
GATED_HINT = "gated on the hub: accept its terms and log in (HF_TOKEN) on the submitting host"

# Optional packages: (module to find, what needs it, pip line).
VLLM = ("vllm", "vLLM", "pip install -e '.[vllm]'")
BITSANDBYTES = ("bitsandbytes", "load_in_4bit", "pip install -e '.[4bit]'")
DEEPSPEED = ("deepspeed", "DeepSpeed ZeRO", "pip install deepspeed")
DEEPSPEED_TOPOLOGIES = ("zero2", "zero3")


class PreflightError(ValueError):
    """The study cannot start on this machine; the message lists every reason."""


@dataclass
class MissingPackage:
    module: str
    feature: str  # what needs it: "load_in_4bit", "vLLM", "DeepSpeed ZeRO"
    pip: str
    needed_by: list[str]  # the config keys asking for the feature

    def line(self) -> str:
        keys = self.needed_by
        where = keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} and {keys[-1]}"
        return f"{self.module} is not installed; {self.feature} needs it at {where}: {self.pip}"


@dataclass
class Report:
    missing_files: list[tuple[str, str]] = field(default_factory=list)  # (config key, path as written)
    missing_packages: list[MissingPackage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    base_dir: str = "."
    problems: list[str] = field(default_factory=list)  # "key: what is wrong", e.g. a model folder without config
    not_cached: list[str] = field(default_factory=list)  # hub repos a HF_HUB_OFFLINE run cannot read

    def error(self, packages: bool = True) -> str | None:
        """The one error for every hard failure (packages and the offline cache included unless `packages`
        is False: what a dry run only warns about); None if nothing stops the study."""
        packages, offline = (self.missing_packages, self.not_cached) if packages else ([], [])
        if not self.missing_files and not packages and not self.problems and not offline:
            return None
        n = len(self.missing_files) + len(packages) + len(self.problems) + len(offline)
        lines = [f"preflight: {n} problem{'s stop' if n > 1 else ' stops'} this study before any job runs:"]
        lines += [f"- {key}: file not found: {path}" for key, path in self.missing_files]
        lines += [f"- {problem}" for problem in self.problems]
        lines += [f"- {line}" for line in offline]
        lines += [f"- {p.line()}" for p in packages]
        if any(not os.path.isabs(path) for _, path in self.missing_files):
            lines.append(f"Relative paths are read from the working directory, {self.base_dir}.")
        if len(packages) > 1:
            lines.append(f"To install them all: {combined_pip(packages)}")
        return "\n".join(lines)


def combined_pip(packages: list[MissingPackage]) -> str:
    """One pip command for several packages: the extras in one `-e '.[a,b]'`, plain names after it."""
    extras, names = [], []
    for p in packages:
        if p.pip.startswith("pip install -e '.["):
            extras.append(p.pip[len("pip install -e '.["):-len("]'")])
        else:
            names.append(p.pip.removeprefix("pip install "))
    parts = ([f"-e '.[{','.join(extras)}]'"] if extras else []) + names
    return "pip install " + " ".join(parts)


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def gated(repo: str) -> bool:
    return any(repo.startswith(g) if g.endswith("/") else repo == g for g in GATED)


def _source(config: dict, method: str, setting: str) -> str:
    """The config key a method's `setting` comes from (its most specific layer that sets it)."""
    return plan.setting_source(config, method, setting)


def _judge_specs(config: dict) -> list[tuple[str, object]]:
    """(config key, judge spec) of every judge the study loads, each key once per spec."""
    found = []
    for method in plan.method_keys(config):
        rewards = plan.method_settings(config, method).get("rewards") or []
        if rewards:
            key = _source(config, method, "rewards")
            found += [(key, spec) for spec in rewards]
    for regime, spec in (config.get("finetune", {}).get("regimes") or {}).items():
        found += [(f"finetune.regimes.{regime}.rewards", judge) for judge in spec.get("rewards") or []]
    for metric, spec in (config.get("evaluate", {}).get("metrics") or {}).items():
        found.append((f"evaluate.metrics.{metric}.judge", spec["judge"]))
    unique, seen = [], set()
    for key, spec in found:
        marker = (key, repr(spec))
        if marker not in seen:
            seen.add(marker)
            unique.append((key, spec))
    return unique


def _judge_label(key: str, spec: dict) -> str:
    """`align.defaults.rewards (strongreject_safety)`; a metric's key alone, as it names one judge."""
    return key if key.endswith(".judge") else f"{key} ({spec['name']})"


def _is_local_model(model: str) -> bool:
    """A judge's `model` that is a path rather than a hub id (plan.hub_judge_models' rule): it starts with
    '.', '/' or '~', or has more than one '/'."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def _exists(path: str, base_dir: str) -> bool:
    full = os.path.join(base_dir, os.path.expanduser(path))
    if any(c in path for c in "*?["):
        return bool(glob.glob(full))
    return os.path.exists(full)


def _dataset_files(spec: dict, found: dict) -> None:
    """(config key -> path) of every local file a resolved dataset spec reads, parts included."""
    kind, name = spec["type"], spec["key"]
    if kind in FILE_TYPES:
        found.setdefault(f"datasets.{name}.path", spec["path"])
    elif kind == "hf" and spec.get("data_files"):
        files = spec["data_files"]
        if isinstance(files, str):
            found.setdefault(f"datasets.{name}.data_files", files)
        elif "/" not in spec["name"]:  # a builder (json, parquet, ...) reading local files, not a hub repo's
            values = files.values() if isinstance(files, dict) else [files]
            flat = [f for v in values for f in ([v] if isinstance(v, str) else v if isinstance(v, list) else [])
                    if isinstance(f, str)]
            for i, path in enumerate(flat):
                found.setdefault(f"datasets.{name}.data_files[{i}]", path)
    elif kind == "heldout":
        _dataset_files(spec["of"], found)
    elif kind == "mixture":
        for part in spec["parts"]:
            _dataset_files(part["dataset"], found)


def _hub_datasets(spec: dict, found: dict) -> None:
    """(config key -> hub id) of every hub dataset a resolved spec reads."""
    if spec["type"] == "hf" and "/" in spec["name"]:
        found.setdefault(f"datasets.{spec['key']}.name", spec["name"])
    elif spec["type"] == "heldout":
        _hub_datasets(spec["of"], found)
    elif spec["type"] == "mixture":
        for part in spec["parts"]:
            _hub_datasets(part["dataset"], found)


def check(config: dict, base_dir: str | None = None) -> Report:
    """Everything this machine lacks for the (checked) config; see the module docstring."""
    base_dir = base_dir or os.getcwd()
    report = Report(base_dir=base_dir)
    files: dict[str, str] = {}
    hub: dict[str, str] = {}
    for name in plan.used_datasets(config):
        spec = plan.dataset_spec(config, name)
        _dataset_files(spec, files)
        _hub_datasets(spec, hub)
    for model, spec in config["models"].items():
        if spec["source"] == "local":
            files[f"models.{model}.path"] = spec["path"]
        elif spec["source"] == "hf":
            hub[f"models.{model}.repo_id"] = spec["repo_id"]
    needs: dict[tuple[str, str, str], list[str]] = {}
    judges = _judge_specs(config)
    for key, spec in judges:
        if not isinstance(spec, dict):
            continue
        model, label = spec.get("model"), _judge_label(key, spec)
        if model and _is_local_model(model):
            files.setdefault(f"{key}.model" if key.endswith(".judge") else f"{label} model", model)
        elif model:
            repo = f"{model}@{spec['revision']}" if spec.get("revision") else model
            hub.setdefault(f"{key}.model" if key.endswith(".judge") else f"{label} model", repo)
        if spec.get("load_in_4bit"):
            needs.setdefault(BITSANDBYTES, []).append(label)
    order = {f"datasets.{name}.": i for i, name in enumerate(config.get("datasets", {}))}

    def in_config_order(item):  # datasets as the config lists them, then models, then judges
        key = item[0]
        return (0, next((i for prefix, i in order.items() if key.startswith(prefix)), 0)) \
            if key.startswith("datasets.") else (1 if key.startswith("models.") else 2, 0)

    # Paths under the results folder are this workflow's own outputs (a rehearsal's stand-in models), made
    # by a job before any job reads them.
    results = Path(base_dir, config["results_dir"]).resolve()
    report.missing_files = sorted(((key, path) for key, path in files.items()
                                   if not _exists(path, base_dir)
                                   and not Path(base_dir, os.path.expanduser(path)).resolve().is_relative_to(results)),
                                  key=in_config_order)

    for method in plan.method_keys(config):
        if plan.method_settings(config, method).get("vllm"):
            needs.setdefault(VLLM, []).append(_source(config, method, "vllm"))
    for regime, spec in (config.get("finetune", {}).get("regimes") or {}).items():
        if spec.get("vllm"):
            needs.setdefault(VLLM, []).append(f"finetune.regimes.{regime}.vllm")
    evaluate = config.get("evaluate", {})
    if evaluate.get("backend") == "vllm":
        needs.setdefault(VLLM, []).append("evaluate.backend (vllm)")
    topology = config.get("launch", {}).get("accelerate_config")
    if topology in DEEPSPEED_TOPOLOGIES:
        needs.setdefault(DEEPSPEED, []).append(f"launch.accelerate_config ({topology})")
    for i, spec in enumerate(evaluate.get("harness") or [], start=1):
        module, extra = HARNESS_PACKAGES[spec["tool"]]
        key = f"evaluate.harness[{i}]"
        if not installed(module):
            what = ", ".join(spec["tasks"]) if spec["tool"] == "lm_eval" else spec["dataset"]
            report.warnings.append(f"{key}: {extra} is not installed, so {spec['tool']} ({what}) is skipped at "
                                   f"every evaluation: pip install -e '.[{extra}]'")
        elif spec.get("backend") == "vllm":
            needs.setdefault(VLLM, []).append(f"{key}.backend (vllm)")
    for (module, feature, pip), keys in needs.items():
        if not installed(module):
            report.missing_packages.append(MissingPackage(module, feature, pip, list(dict.fromkeys(keys))))

    for key, repo in hub.items():
        if gated(repo.split("@")[0]):
            report.warnings.append(f"{key}: {repo} is {GATED_HINT}")
    _check_models(config, base_dir, results, report)
    _check_cache(config, hub, report)
    return report


def _check_models(config: dict, base_dir: str, results: Path, report: Report) -> None:
    """Local model folders hold a model (config, tokenizer, weights); every LoRA target names a module of
    every model it trains (module names read from the weights' header or index, or config.json's family)."""
    from .model_files import folder_problem, module_names, short_names, unmatched_targets

    missing = {key for key, _ in report.missing_files}
    for model, spec in config["models"].items():
        key = f"models.{model}.path"
        if spec["source"] != "local" or key in missing:
            continue
        path = Path(base_dir, os.path.expanduser(spec["path"]))
        if not path.resolve().is_relative_to(results) and (problem := folder_problem(path)):
            report.problems.append(f"{key}: {spec['path']} {problem}")
    loras = [(plan.setting_source(config, m, "lora.target_modules"), plan.method_settings(config, m).get("lora"))
             for m in plan.method_keys(config)]
    loras += [(f"finetune.regimes.{r}.lora.target_modules", spec.get("lora"))
              for r, spec in (config.get("finetune", {}).get("regimes") or {}).items()]
    loras = [(key, lora["target_modules"]) for key, lora in loras if lora and lora.get("target_modules")]
    if not loras:
        return
    reported = set()
    for model, spec in config["models"].items():
        if spec["source"] == "local" and f"models.{model}.path" in missing:
            continue
        local = {**spec, "path": str(Path(base_dir, os.path.expanduser(spec["path"])))} if spec["source"] == "local" \
            else spec
        names, read_from = module_names(local, str(results))
        if names is None:
            continue  # nothing to read here (not cached, a stand-in): the job checks before it trains
        for key, targets in loras:
            unmatched = unmatched_targets(targets, names)
            if unmatched and (key, model) not in reported:
                reported.add((key, model))
                report.problems.append(f"config key {key}: {unmatched} match no module of models.{model} (names "
                                       f"from {read_from}); its modules end in: {', '.join(short_names(names))}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_cache(config: dict, hub: dict[str, str], report: Report) -> None:
    """With HF_HUB_OFFLINE set, every hub model and dataset must be in the Hugging Face cache already: the
    local jobs that would fetch them run offline too (and a dataset job would fail on a connection error)."""
    if not _offline() or not hub:
        return
    from huggingface_hub import constants, try_to_load_from_cache

    revisions = {f"models.{m}.repo_id": spec.get("revision") for m, spec in config["models"].items()
                 if spec["source"] == "hf"}
    where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
    fix = "run once with network on this host (unset HF_HUB_OFFLINE), or copy the cache here"
    for key, repo in hub.items():
        if key.startswith("datasets."):
            name = repo
            folders = [Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}",
                       Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
                       / name.replace("/", "___")]
            if not any(folder.is_dir() for folder in folders):
                report.not_cached.append(f"{key}: {name} is not in {where}, and HF_HUB_OFFLINE is set: {fix}")
            continue
        name, _, revision = repo.partition("@")
        revision = revisions.get(key) or revision or None
        found = [try_to_load_from_cache(name, f, revision=revision) for f in ("config.json", "adapter_config.json")]
        if not any(isinstance(f, str) for f in found):
            at = f"@{revision}" if revision else ""
            report.not_cached.append(f"{key}: {name}{at} is not in {where}, and HF_HUB_OFFLINE is set: {fix}")


def run(config: dict, dryrun: bool = False, base_dir: str | None = None, stream=None) -> Report:
    """Check, print the warnings (one line each, on stderr), raise PreflightError for the hard failures.

    In a dry run, missing packages are warnings unless something else fails too (then the one error
    names everything)."""
    stream = stream or sys.stderr
    report = check(config, base_dir)
    error = report.error(packages=not dryrun or bool(report.missing_files or report.problems))
    lines = list(report.warnings)
    if dryrun and not report.missing_files and not report.problems:
        lines += [f"{p.line()} (a real run stops here)" for p in report.missing_packages]
        lines += [f"{line} (a real run stops here)" for line in report.not_cached]
    for line in lines:
        print(f"preflight warning: {line}", file=stream)
    if error:
        raise PreflightError(error)
    return report
