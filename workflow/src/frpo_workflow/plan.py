"""The study plan: which model states a config asks for, and each training job's own settings.

Each job's settings are resolved here from the layered config (defaults < family < per-λ) so that
a job's parameters contain only what affects it: adding a λ or a regime changes no other job's
parameters, and Snakemake reruns nothing else.
"""

from __future__ import annotations

import functools
import re

# Accelerate configs that launch one process whatever --num_processes says (measured: `cpu` with 2 ran one).
SINGLE_PROCESS_TOPOLOGIES = ("cpu", "single_gpu")
METHOD_RE = re.compile(r"^(grpo|frpo-l(?P<lam>[0-9]+(\.[0-9]+)?(e-?[0-9]+)?))$")


def format_lambda(lam: float) -> str:
    """λ as it appears in a method key: 1.0 -> '1', 0.2 -> '0.2', 1e-05 -> '1e-05'."""
    return f"{float(lam):g}"


def method_keys(config: dict) -> list[str]:
    """grpo (unless disabled) and frpo-l<λ> for each λ of the sweep, in config order."""
    align = config["align"]
    keys = [] if align.get("grpo", {}) is None else ["grpo"]
    lambdas = align.get("frpo", {}).get("lambdas", [])
    names = [f"frpo-l{format_lambda(lam)}" for lam in lambdas]
    if len(set(names)) != len(names):
        raise ValueError(f"align.frpo.lambdas has duplicates after formatting: {lambdas}")
    return keys + names


def method_lambda(method: str) -> float | None:
    """λ of a method key; None for GRPO (λ = ∞)."""
    match = METHOD_RE.match(method)
    if not match:
        raise ValueError(f"unknown method key {method!r}: expected 'grpo' or 'frpo-l<lambda>'")
    return float(match["lam"]) if match["lam"] else None


def _layered(*layers: dict) -> dict:
    """Settings layers merged in order; a layer that sets `steps` or `epochs` drops the other's earlier
    value, so a per-method `epochs` overrides the defaults' `steps` instead of conflicting with it."""
    merged: dict = {}
    for layer in layers:
        for a, b in (("steps", "epochs"), ("epochs", "steps")):
            if a in layer:
                merged.pop(b, None)
        merged.update(layer)
    return merged


def method_settings(config: dict, method: str) -> dict:
    """Training settings of one alignment method (PolicyConfig fields)."""
    align = config["align"]
    if method not in method_keys(config):
        raise ValueError(f"method {method!r} is not in the config's sweep {method_keys(config)}")
    settings = dict(align.get("defaults", {}))
    lam = method_lambda(method)
    if lam is None:
        return {**_layered(settings, align.get("grpo") or {}), "method": "grpo"}
    frpo = align.get("frpo", {})
    return {**_layered(settings, frpo.get("settings", {}), per_lambda(config).get(format_lambda(lam), {})),
            "method": "frpo", "lam": lam, "jackknife": frpo.get("jackknife", True),
            "baseline": frpo.get("baseline", True)}


def per_lambda(config: dict) -> dict[str, dict]:
    """align.frpo.per_lambda keyed by formatted λ ('0.5', not 0.5 or "0.50").

    An entry for a λ outside the sweep is unused, so an overlay can shrink `lambdas` without copying a
    preset's per-λ table; a key that is no number (a typo such as "O.5") or two keys for one λ fail.
    """
    table: dict[str, dict] = {}
    for key, settings in (config["align"].get("frpo", {}).get("per_lambda") or {}).items():
        try:
            lam = format_lambda(float(key))
        except (TypeError, ValueError):
            raise ValueError(f"align.frpo.per_lambda: key {key!r} is not a number (keys are λ values, "
                             f"as in align.frpo.lambdas)") from None
        if lam in table:
            raise ValueError(f"align.frpo.per_lambda: two keys for λ = {lam}")
        table[lam] = settings or {}
    return table


def align_settings(config: dict, method: str, seed: int) -> dict:
    """Training settings of one alignment job: its method's settings with the alignment seed."""
    return {**method_settings(config, method), "seed": seed}


def regime_settings(config: dict, regime: str, seed: int) -> tuple[str, str, dict]:
    """(type, dataset name, training settings) of a downstream regime with its seed."""
    regimes = config.get("finetune", {}).get("regimes", {})
    if regime not in regimes:
        raise ValueError(f"unknown regime {regime!r}; known: {sorted(regimes)}")
    settings = dict(regimes[regime])
    kind, dataset = settings.pop("type"), settings.pop("dataset")
    settings.pop("curves", None)  # the curve schedule is the callback's, not the trainer's
    settings["seed"] = seed
    if kind == "rl":
        settings.setdefault("method", "grpo")
    return kind, dataset, settings


def schema_errors(config: dict, schema_path: str) -> str:
    """The config's schema violations, one short line each (`config key align.defaults: ...`), for the
    error Snakemake's validate() gives as a dump of the whole (sub)schema."""
    import jsonschema
    import yaml

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    lines = []
    for error in sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path)):
        where = ".".join(map(str, error.path)) or "(top level)"
        message = error.message if len(error.message) < 300 else error.message[:300] + "..."
        lines.append(f"config key {where}: {message}")
    return "\n".join(lines)


def dataset_spec(config: dict, name: str, where: str = "a dataset reference", _trail: tuple = ()) -> dict:
    """The self-contained spec of dataset `name`: names in heldout/mixture specs replaced by their specs,
    and `key` (the dataset's name, which prefixes generated ids) added. `where` names the config key
    that refers to it, for the error when it does not exist."""
    datasets = config.get("datasets", {})
    if name not in datasets:
        raise ValueError(f"config key {where} names dataset {name!r}, which is not under datasets: "
                         f"{sorted(datasets)}")
    if name in _trail:
        raise ValueError(f"datasets {' -> '.join([*_trail, name])}: a dataset cannot contain itself")
    spec = {**datasets[name], "key": name}
    trail = (*_trail, name)
    if spec.get("type") == "heldout":
        spec["of"] = dataset_spec(config, spec["of"], f"datasets.{name}.of", trail)
    elif spec.get("type") == "mixture":
        spec["parts"] = [{**part, "dataset": dataset_spec(config, part["dataset"], f"datasets.{name}.parts", trail)}
                         for part in spec["parts"]]
    return spec


def dataset_uses(config: dict) -> dict[str, str]:
    """Config key -> dataset name, for every dataset a stage reads."""
    uses = {"align.dataset": config["align"]["dataset"]}
    uses.update({f"models.{m}.pretrain_dataset": spec.get("pretrain_dataset", "pretrain")
                 for m, spec in config["models"].items() if spec["source"] == "tiny"})
    uses.update({f"finetune.regimes.{r}.dataset": spec["dataset"]
                 for r, spec in config.get("finetune", {}).get("regimes", {}).items()})
    uses.update({f"evaluate.sets.{k}": v for k, v in config.get("evaluate", {}).get("sets", {}).items()})
    uses.update({f"finetune.curves.sets.{k}": v
                 for k, v in (config.get("finetune", {}).get("curves", {}).get("sets") or {}).items()})
    return uses


def used_datasets(config: dict) -> list[str]:
    """Names of the datasets the study reads, in first-use order (each one a `dataset` job)."""
    return list(dict.fromkeys(dataset_uses(config).values()))


def dataset_usage(config: dict, name: str) -> dict:
    """What the study does with dataset `name`, for its job's usage check (`data.check.check_usage`):
    {"completions": key of an SFT regime using it, "sets": {kind it must hold: key}, "judges": {judge: key}}.

    Deduplicated, so a λ added with the same rewards leaves the dataset job's parameters as they were.
    """
    from .metrics import DEFAULT_METRICS, judge_name

    usage: dict = {"sets": {}, "judges": {}}
    if config["align"]["dataset"] == name:
        for method in method_keys(config):
            for judge in method_settings(config, method).get("rewards", []):
                usage["judges"].setdefault(judge_name(judge), f"align ({method}) rewards")
    for regime, spec in config.get("finetune", {}).get("regimes", {}).items():
        if spec["dataset"] != name:
            continue
        if spec["type"] == "sft":
            usage.setdefault("completions", f"finetune.regimes.{regime}")
        for judge in spec.get("rewards", []):
            usage["judges"].setdefault(judge_name(judge), f"finetune.regimes.{regime}.rewards")
    metrics = config.get("evaluate", {}).get("metrics", DEFAULT_METRICS)
    set_keys = {"evaluate.sets": config.get("evaluate", {}).get("sets", {}),
                "finetune.curves.sets": config.get("finetune", {}).get("curves", {}).get("sets") or {}}
    for prefix, sets in set_keys.items():
        for set_name, dataset in sets.items():
            if dataset != name:
                continue
            usage["sets"].setdefault(set_name, f"{prefix}.{set_name}")
            for metric, spec in metrics.items():
                if spec["set"] == set_name:
                    usage["judges"].setdefault(judge_name(spec["judge"]), f"evaluate.metrics.{metric}")
    return usage


def hub_judge_models(specs) -> list[str]:
    """`repo` or `repo@revision` of every judge spec naming a hub model (`model: org/name`), for the
    local rule that fetches it before the jobs that load it offline. Local paths are skipped."""
    import os

    found = []
    for spec in specs or []:
        model = spec.get("model") if isinstance(spec, dict) else None
        if model and model.count("/") == 1 and not model.startswith((".", "/", "~")) and not os.path.exists(model):
            found.append(f"{model}@{spec['revision']}" if spec.get("revision") else model)
    return sorted(set(found))


def hub_marker(repo: str) -> str:
    """A hub repo (`org/name[@revision]`) as one path component: `org--name[@revision]`."""
    return repo.replace("/", "--", 1)


def hub_repo(marker: str) -> tuple[str, str | None]:
    """(repo id, revision or None) back from `hub_marker`'s form."""
    name, _, revision = marker.partition("@")
    return name.replace("--", "/", 1), revision or None


@functools.lru_cache(maxsize=1)
def lora_keys() -> frozenset[str]:
    """The fields of the installed peft's LoraConfig, read from its source without importing peft
    (importing it takes seconds, and this runs at every DAG build); tests compare it with the import."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("peft")
    if spec is None or spec.origin is None:
        raise ValueError("LoRA settings need peft, which is not installed")
    root = Path(spec.origin).parent
    fields = set()
    for path, classes in ((root / "tuners" / "lora" / "config.py", {"LoraConfig"}),
                          (root / "config.py", {"PeftConfig", "PeftConfigMixin"})):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name in classes:
                fields |= {item.target.id for item in node.body
                           if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    return frozenset(fields)


def _merged(base: dict, update: dict) -> dict:
    """`update` over `base` key by key, as Snakemake merges config files (mappings recursively)."""
    import copy

    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def apply_overlays(config: dict, layers: list[dict]) -> dict:
    """A config Snakemake merged key by key from `layers` (each --configfile in order, then --config) over
    its base (config.yaml, or nothing under a preset), with the overlay rule applied: an entry under
    `datasets:` that names its `type` (or under `models:` its `source`) replaces what earlier layers and
    the base said of it whole, and later layers tweak that entry key by key. So a parquet `align` keeps no
    toy `split`, and a model switched to `source: local` keeps no `repo_id`; a tweak stays a tweak.

    Decided from the layers alone (the files and --config given), so the driver and every job it spawns,
    which re-read the Snakefile with the same --configfiles, build the same config.
    """
    def entries(layer, section):
        return layer.get(section) if isinstance(layer.get(section), dict) else {}

    merged = _merged(config, {})
    for section, marker in (("datasets", "type"), ("models", "source")):
        names = dict.fromkeys(name for layer in layers for name in entries(layer, section))
        for name in names:
            entry = None
            for layer in layers:
                part = entries(layer, section).get(name)
                if isinstance(part, dict) and marker in part:
                    entry = _merged({}, part)
                elif isinstance(part, dict) and entry is not None:
                    entry = _merged(entry, part)
            if entry is not None:
                merged.setdefault(section, {})[name] = entry
    return merged


def check_config(config: dict) -> None:
    """Everything about a config that can be checked without reading data: fail before any job starts.

    Dataset names resolve (no cycles), each dataset's keys suit its type, model sources have what they
    need, judges exist, every training job's settings build (keys valid for its run type, FRPO's λ),
    LoRA keys exist in peft. Data itself is checked by its dataset job (`data.check`), first in line.
    """
    from .data.loaders import check_spec
    from .judges import JUDGE_FACTORIES, JUDGES
    from .judges import check_spec as check_judge_spec
    from .settings import RUN_TYPES

    if not method_keys(config):
        raise ValueError("align: no method to run (grpo is null and align.frpo.lambdas is empty)")
    per_lambda(config)  # a key that is no λ fails even where the sweep has no FRPO method
    for key, name in dataset_uses(config).items():
        dataset_spec(config, name, key)
    for name, spec in config.get("datasets", {}).items():
        check_spec(spec, f"config key datasets.{name}")
        dataset_spec(config, name, f"datasets.{name}")
    launch = config.get("launch", {})
    topology = launch.get("accelerate_config", "cpu")
    processes = launch.get("num_processes", 1) or max(1, config.get("resources", {}).get("train", {}).get("gpu", 0))
    if topology in SINGLE_PROCESS_TOPOLOGIES and processes > 1:
        raise ValueError(f"launch: accelerate_config {topology!r} runs one process, but num_processes (or the train "
                         f"gpu resource) asks for {processes}; use cpu_ddp, ddp, zero2 or zero3")
    needs = {"local": "path", "hf": "repo_id"}
    for model, spec in config["models"].items():
        key = needs.get(spec["source"])
        if key and not spec.get(key):
            raise ValueError(f"config key models.{model}: source {spec['source']!r} needs {key!r}")

    def check_judges(specs, where):
        for judge in specs or []:
            name = judge if isinstance(judge, str) else judge.get("name")
            if name not in JUDGES and name not in JUDGE_FACTORIES:
                raise ValueError(f"{where}: unknown judge {name!r}; known judges: "
                                 f"{', '.join(sorted({*JUDGES, *JUDGE_FACTORIES}))}")
            check_judge_spec(judge, where)  # its options build (an endpoint judge's variables are set)

    def check_lora(lora, where):
        unknown = sorted(set(lora or {}) - lora_keys())
        if unknown:
            raise ValueError(f"{where}.lora: unknown LoRA key(s) {unknown} (not fields of peft's LoraConfig)")

    for method in method_keys(config):
        where = f"align ({method})"
        settings = method_settings(config, method)
        check_judges(settings.get("rewards"), where + " rewards")
        RUN_TYPES["rl"](settings, where)
        check_lora(settings.get("lora"), where)
    metrics = config.get("evaluate", {}).get("metrics", {})
    for metric, spec in metrics.items():
        check_judges([spec["judge"]], f"evaluate.metrics.{metric}")
    unknown = [m for m in config.get("evaluate", {}).get("sampled", {}).get("metrics", []) if m not in metrics]
    if unknown:
        raise ValueError(f"evaluate.sampled.metrics: {unknown} not among evaluate.metrics ({', '.join(metrics)})")
    methods = method_keys(config)
    missing = [m for m in config.get("report", {}).get("baselines", []) if m not in methods]
    if missing:
        raise ValueError(f"report.baselines: {missing} not among the study's methods ({', '.join(methods)})")
    from .harness import check_spec as check_harness

    for i, spec in enumerate(config.get("evaluate", {}).get("harness", []), start=1):
        check_harness(spec, f"evaluate.harness[{i}]")
    for regime, spec in config.get("finetune", {}).get("regimes", {}).items():
        where = f"finetune.regimes.{regime}"
        kind, _, settings = regime_settings(config, regime, 0)
        check_judges(spec.get("rewards"), where + ".rewards")
        if kind == "rl" and not spec.get("rewards"):
            raise ValueError(f"{where}: an rl regime needs rewards (judge names)")
        RUN_TYPES[kind](settings, where)
        check_lora(settings.get("lora"), where)
