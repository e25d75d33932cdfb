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
    """grpo (unless disabled), frpo-l<λ> for each λ of the sweep, then the extra arms (align.arms), in config
    order: every alignment arm of the study (the {method} wildcard)."""
    align = config["align"]
    keys = [] if align.get("grpo", {}) is None else ["grpo"]
    lambdas = align.get("frpo", {}).get("lambdas", [])
    names = [f"frpo-l{format_lambda(lam)}" for lam in lambdas]
    if len(set(names)) != len(names):
        raise ValueError(f"align.frpo.lambdas has duplicates after formatting: {lambdas}")
    arms = list(extra_arms(config))
    clash = [a for a in arms if METHOD_RE.match(a)]
    if clash:
        raise ValueError(f"align.arms: {clash} would be a sweep arm's key (grpo, frpo-l<λ>); name extra arms "
                         "otherwise (e.g. grpo-matched)")
    return keys + names + arms


# ---- extra alignment arms (align.arms): controls and other settings beside the sweep ----------------
# An extra arm is GRPO or FRPO with its own settings over align.defaults (and align.grpo or
# align.frpo.settings), optionally its own alignment dataset and seeds: a GRPO control with a raised lr
# (matched on alignment strength), or the math setting's arms (RL on arithmetic). Which downstream regimes
# run on which arms: finetune.regimes.<regime>.arms (default: every arm).
ARM_KEYS = ("method", "lam", "jackknife", "baseline", "dataset", "seeds", "label")


def extra_arms(config: dict) -> dict[str, dict]:
    """align.arms: arm key -> its spec (method, lam, settings, dataset, seeds, label)."""
    return config["align"].get("arms") or {}


def arm_lambda(config: dict, method: str) -> float | None:
    """λ of any arm: an extra FRPO arm's `lam`, None for a GRPO arm (λ = ∞), else from the sweep key."""
    arm = extra_arms(config).get(method)
    if arm is not None:
        return float(arm["lam"]) if arm["method"] == "frpo" else None
    return method_lambda(method)


def arm_dataset(config: dict, method: str) -> str:
    """The alignment dataset of an arm: its own `dataset`, else align.dataset."""
    return extra_arms(config).get(method, {}).get("dataset") or config["align"]["dataset"]


def arm_seeds(config: dict, method: str) -> list[int]:
    """The alignment seeds of an arm: its own `seeds`, else align.seeds."""
    return list(extra_arms(config).get(method, {}).get("seeds") or config["align"].get("seeds", [0]))


def regime_arms(config: dict, regime: str) -> list[str]:
    """The arms a downstream regime fine-tunes: finetune.regimes.<regime>.arms, else every arm."""
    arms = config["finetune"]["regimes"][regime].get("arms")
    return list(arms) if arms else method_keys(config)


def method_layers(config: dict, method: str) -> list[tuple[str, dict]]:
    """(config key, settings) of the layers an arm's training settings are merged from, least specific first."""
    align = config["align"]
    layers = [("align.defaults", align.get("defaults") or {})]
    arm = extra_arms(config).get(method)
    kind = arm["method"] if arm is not None else ("grpo" if method_lambda(method) is None else "frpo")
    if kind == "grpo":
        layers.append(("align.grpo", align.get("grpo") or {}))
    else:
        frpo = align.get("frpo") or {}
        layers.append(("align.frpo.settings", frpo.get("settings") or {}))
        lam = format_lambda(arm_lambda(config, method))
        for key, settings in (frpo.get("per_lambda") or {}).items() if arm is None else ():
            try:
                same = format_lambda(float(key)) == lam
            except (TypeError, ValueError):  # a key that is no λ: check_config names it
                same = False
            if same:
                layers.append((f"align.frpo.per_lambda.{key}", settings or {}))
    if arm is not None:
        layers.append((f"align.arms.{method}", {k: v for k, v in arm.items() if k not in ARM_KEYS}))
    return layers


def study_states(config: dict) -> tuple[list[tuple], list[tuple]]:
    """The study's aligned states [(method, align_seed)] and fine-tuned ones [(method, align_seed, regime,
    seed)] per base model: each arm at its seeds, each regime on its arms, each at finetune.seeds."""
    aligned = [(m, s) for m in method_keys(config) for s in arm_seeds(config, m)]
    seeds = config.get("finetune", {}).get("seeds", [0])
    tuned = [(m, a, r, s) for r in config.get("finetune", {}).get("regimes", {}) for m in regime_arms(config, r)
             for a in arm_seeds(config, m) for s in seeds]
    return aligned, tuned


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
    arm = extra_arms(config).get(method)
    if arm is not None:
        merged = _layered(*(layer for _, layer in method_layers(config, method)))
        if arm["method"] == "grpo":
            return {**merged, "method": "grpo"}
        frpo = align.get("frpo", {})
        return {**merged, "method": "frpo", "lam": float(arm["lam"]),
                "jackknife": arm.get("jackknife", frpo.get("jackknife", True)),
                "baseline": arm.get("baseline", frpo.get("baseline", True))}
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


def layer_keys(config: dict, method: str) -> list[tuple[str, dict]]:
    """(config key, settings) of the layers a method's settings are built from, least specific first (an
    extra arm's own layer, align.arms.<arm>, last: `method_layers`)."""
    return method_layers(config, method)


def setting_source(config: dict, method: str, setting: str) -> str:
    """The config key a method's `setting` comes from (`lora.r` looks up `lora`): its most specific layer
    that sets it, else `align.defaults.<setting>` (a default nobody set)."""
    head, _, rest = setting.partition(".")
    for key, layer in reversed(layer_keys(config, method)):
        if head in layer:
            return f"{key}.{setting}"
    return f"align.defaults.{setting}"


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
    settings.pop("arms", None)  # which arms it runs on is the plan's
    settings["seed"] = seed
    if kind == "rl":
        settings.setdefault("method", "grpo")
    return kind, dataset, settings


def check_state(config: dict, wildcards) -> None:
    """A target's wildcards against the config, for the rules' input functions: a target naming a method,
    alignment seed, regime or seed the config does not have (`results/aligned/tiny/grpo/seed7` when
    align.seeds is [0]) is refused at DAG build, naming the key, rather than planned or failed on a KeyError."""
    values = dict(wildcards.items()) if hasattr(wildcards, "items") else dict(wildcards)
    methods = method_keys(config)
    method = values.get("method")
    arm = method in extra_arms(config) and extra_arms(config)[method].get("seeds")  # an extra arm's own seeds
    checks = [("method", methods, "align.frpo.lambdas (and align.grpo, align.arms)", str),
              ("align_seed", arm_seeds(config, method) if method in methods else config["align"].get("seeds", [0]),
               f"align.arms.{method}.seeds" if arm else "align.seeds", int),
              ("regime", list(config.get("finetune", {}).get("regimes", {})), "finetune.regimes", str),
              ("seed", config.get("finetune", {}).get("seeds", [0]), "finetune.seeds", int)]
    for name, known, key, kind in checks:
        if name in values and kind(values[name]) not in known:
            value = kind(values[name])
            raise ValueError(f"{name} {value!r} is not in {key} {known}: a target names a state of this "
                             f"study's config (add it there, or ask for one that is)")


def schema_errors(config: dict, schema_path: str, strict: bool = False) -> str:
    """The config's schema violations, one short line each (`config key align.defaults: ...`), for the
    error Snakemake's validate() gives as a dump of the whole (sub)schema."""
    import jsonschema
    import yaml

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator
    if strict:  # JSON Schema counts 1.0 as an integer; a path (seed1.0) or a count must not
        checker = validator.TYPE_CHECKER.redefine(
            "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
        validator = jsonschema.validators.extend(validator, type_checker=checker)
    lines = []
    for error in sorted(validator(schema).iter_errors(config), key=lambda e: list(map(str, e.path))):
        where = ".".join(map(str, error.path)) or "(top level)"
        message = error.message if len(error.message) < 300 else error.message[:300] + "..."
        if strict and error.validator == "type" and "integer" in str(error.validator_value):
            message = f"{error.instance!r} is not an integer (write {int(error.instance)})" \
                if isinstance(error.instance, float) and error.instance.is_integer() else message
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
    uses.update({f"align.arms.{a}.dataset": spec["dataset"] for a, spec in extra_arms(config).items()
                 if spec.get("dataset")})
    uses.update({f"models.{m}.pretrain_dataset": spec.get("pretrain_dataset", "pretrain")
                 for m, spec in config["models"].items() if spec["source"] == "tiny"})
    uses.update({f"finetune.regimes.{r}.dataset": spec["dataset"]
                 for r, spec in config.get("finetune", {}).get("regimes", {}).items()})
    uses.update({f"evaluate.sets.{k}": v for k, v in config.get("evaluate", {}).get("sets", {}).items()})
    uses.update({f"finetune.curves.sets.{k}": v
                 for k, v in (config.get("finetune", {}).get("curves", {}).get("sets") or {}).items()})
    from .defences import dataset_uses as defence_uses

    uses.update(defence_uses(config))  # replay and Lisa safety data
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
    for method in method_keys(config):
        if arm_dataset(config, method) == name:
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
    from .defences import dataset_usage as defence_usage

    for key, value in defence_usage(config, name).items():  # safety data holds refusals; an attack's pool, compliance
        usage.setdefault(key, value)
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

    In the mappings of named entries (NAMED_SECTIONS), an empty mapping empties what came before it
    (`finetune: {regimes: {}}`) and an entry set to null is dropped (`finetune: {regimes: {rl-arithmetic: null}}`).

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
    for path in NAMED_SECTIONS:
        parts = [_get(layer, path) for layer in layers]
        emptied = [i for i, part in enumerate(parts) if part == {}]
        section = _get(merged, path)
        if not isinstance(section, dict):
            continue
        if emptied:  # `regimes: {}` in an overlay: what earlier layers and the base said is dropped
            named = {name for part in parts[emptied[-1] + 1:] if isinstance(part, dict) for name in part}
            section = {name: value for name, value in section.items() if name in named}
        # `regimes: {rl-arithmetic: null}`: that entry is dropped
        _set(merged, path, {name: value for name, value in section.items() if value is not None})
    return merged


# Mappings of named entries (a dataset, a model, a regime, a metric, a λ's settings): in an overlay, `{}`
# empties one and `name: null` drops an entry (Snakemake's key-by-key merge alone would keep both as they were).
NAMED_SECTIONS = (("datasets",), ("models",), ("finetune", "regimes"), ("evaluate", "metrics"),
                  ("align", "frpo", "per_lambda"))


def _get(config, path: tuple):
    for key in path:
        if not isinstance(config, dict) or key not in config:
            return None
        config = config[key]
    return config


def _set(config: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        config = config[key]
    config[path[-1]] = value


def check_config(config: dict) -> None:
    """Everything about a config that can be checked without reading data: fail before any job starts.

    Dataset names resolve (no cycles), each dataset's keys suit its type, model sources have what they
    need, judges exist, every training job's settings build (keys valid for its run type, FRPO's λ),
    LoRA keys exist in peft. Data itself is checked by its dataset job (`data.check`), first in line.
    """
    from .data.loaders import check_spec
    from .judges import JUDGE_FACTORIES, JUDGES
    from .judges import check_spec as check_judge_spec
    from .settings import RUN_TYPES, SettingError

    if not method_keys(config):
        raise ValueError("align: no method to run (grpo is null and align.frpo.lambdas is empty)")
    check_arms(config)  # extra arms first: every arm's settings below are built from them
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

    gpus = {family: (config.get("resources", {}).get(family) or {}).get("gpu", 0) for family in ("train",)}

    def build(kind, settings, where, source):
        """The run's settings as its job builds them; a bad value is named by the config key that set it."""
        try:
            RUN_TYPES[kind](settings, where)
        except SettingError as err:
            raise ValueError(f"config key {source(err.field)}: {err.detail}") from None
        if settings.get("bf16") and not gpus["train"]:
            raise ValueError(f"config key {source('bf16')}: true, but resources.train.gpu is 0: the job trains on "
                             f"CPUs, where it would run in float32 all the same (bf16 is for GPUs); set bf16: false, "
                             f"or give the train family GPUs")

    for method in method_keys(config):
        where = f"align ({method})"
        settings = method_settings(config, method)
        check_judges(settings.get("rewards"), f"config key {setting_source(config, method, 'rewards')} ({method})")
        build("rl", settings, where, lambda field, method=method: setting_source(config, method, field))
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
        build(kind, settings, where, lambda field, where=where: f"{where}.{field}")
        check_lora(settings.get("lora"), where)
    from .defences import check_config as check_defences

    check_defences(config)  # what a defence's or attack's toy data holds, without reading it
    check_study(config)


def check_study(config: dict, cwd: str | None = None) -> None:
    """What makes a study run other than its user expects, silently: refused here with the reason.

    A metric on a set the study does not evaluate (its values would be missing from metrics.json), no
    downstream regime (an overlay's `regimes: {}`), more cpu_ddp processes than the machine has cores, a
    results folder that is the working directory (outputs among the sources).
    """
    import os
    from pathlib import Path

    sets = config.get("evaluate", {}).get("sets", {})
    for metric, spec in config.get("evaluate", {}).get("metrics", {}).items():
        if spec["set"] not in sets:
            raise ValueError(f"config key evaluate.metrics.{metric}.set: {spec['set']!r} is not in evaluate.sets "
                             f"({', '.join(sets) or 'none'}), so the metric would have no values; add "
                             f"evaluate.sets.{spec['set']} (a dataset name) or drop the metric "
                             f"(evaluate: {{metrics: {{{metric}: null}}}} in an overlay)")
    if not config.get("finetune", {}).get("regimes"):
        raise ValueError("config key finetune.regimes: no regime left (an overlay's `regimes: {}` empties it): the "
                         "study compares methods along downstream fine-tunes, so it needs one; to drop a single "
                         "regime, set it to null (finetune: {regimes: {<name>: null}})")
    launch = config.get("launch", {})
    train = config.get("resources", {}).get("train", {})
    processes = launch.get("num_processes", 1) or max(1, train.get("gpu", 0))
    cores = os.cpu_count() or 1
    if launch.get("accelerate_config") == "cpu_ddp" and processes > max(cores, train.get("cpus_per_task", 1)):
        raise ValueError(f"config key launch.num_processes: {processes} processes of cpu_ddp, but this machine has "
                         f"{cores} cores (and resources.train.cpus_per_task is {train.get('cpus_per_task', 1)}): "
                         f"each process trains on a core of its own; at most {max(cores, train.get('cpus_per_task', 1))}")
    results = config.get("results_dir", "results")
    here = Path(cwd or os.getcwd()).resolve()
    if not str(results).strip() or here.is_relative_to(Path(here, results).resolve()):
        raise ValueError(f"config key results_dir: {results!r} is the working directory{' or above it' if results else ''}: "
                         f"every output, log and checkpoint would land among the sources; name a folder "
                         f"(results_dir: results)")


def check_arms(config: dict) -> None:
    """align.arms, finetune.regimes.<r>.arms and report.comparisons name arms that exist and make sense: an
    FRPO arm has λ > 0, a regime runs on arms of the study, a comparison's arms share alignment seeds (it is
    paired by seed) and its regime runs on both."""
    for name, arm in extra_arms(config).items():
        if arm.get("method") not in ("grpo", "frpo"):
            raise ValueError(f"align.arms.{name}: method must be grpo or frpo, got {arm.get('method')!r}")
        if arm["method"] == "frpo" and not (isinstance(arm.get("lam"), (int, float)) and arm["lam"] > 0):
            raise ValueError(f"align.arms.{name}: an frpo arm needs lam > 0, got {arm.get('lam')!r}")
        if arm["method"] == "grpo" and "lam" in arm:
            raise ValueError(f"align.arms.{name}: a grpo arm takes no lam")
    methods = method_keys(config)
    for regime, spec in config.get("finetune", {}).get("regimes", {}).items():
        unknown = [a for a in spec.get("arms") or [] if a not in methods]
        if unknown:
            raise ValueError(f"finetune.regimes.{regime}.arms: {unknown} not among the study's arms ({', '.join(methods)})")
    report = config.get("report", {})
    for i, comparison in enumerate(report.get("comparisons") or [], start=1):
        where = f"report.comparisons[{i}]"
        for side in ("arm", "baseline"):
            if comparison[side] not in methods:
                raise ValueError(f"{where}.{side}: {comparison[side]!r} not among the study's arms ({', '.join(methods)})")
        shared = set(arm_seeds(config, comparison["arm"])) & set(arm_seeds(config, comparison["baseline"]))
        if not shared:
            raise ValueError(f"{where}: {comparison['arm']} and {comparison['baseline']} share no alignment seed "
                             "(the comparison is paired by seed)")
        regime = comparison.get("regime") or (report.get("endpoint") or {}).get("regime")
        if regime is not None:
            # Each side in its regime: the baseline may be read in another (a defended regime against a plain one).
            sides = [("arm", regime), ("baseline", comparison.get("baseline_regime") or regime)]
            for side, name in sides:
                if name not in config.get("finetune", {}).get("regimes", {}):
                    raise ValueError(f"{where}: regime {name!r} is not under finetune.regimes")
                if comparison[side] not in regime_arms(config, name):
                    raise ValueError(f"{where}: regime {name!r} does not run on {[comparison[side]]} "
                                     f"(finetune.regimes.{name}.arms)")
            if comparison["arm"] == comparison["baseline"] and sides[0][1] == sides[1][1]:
                raise ValueError(f"{where}: compares {comparison['arm']} in {regime!r} with itself")
