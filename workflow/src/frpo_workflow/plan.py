"""The study plan: which model states a config asks for, and each training job's own settings.

Each job's settings are resolved here from the layered config (defaults < family < per-λ) so that
a job's parameters contain only what affects it: adding a λ or a regime changes no other job's
parameters, and Snakemake reruns nothing else.
"""

from __future__ import annotations

import re

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


def method_settings(config: dict, method: str) -> dict:
    """Training settings of one alignment method (PolicyConfig fields)."""
    align = config["align"]
    if method not in method_keys(config):
        raise ValueError(f"method {method!r} is not in the config's sweep {method_keys(config)}")
    settings = dict(align.get("defaults", {}))
    lam = method_lambda(method)
    if lam is None:
        return {**settings, **(align.get("grpo") or {}), "method": "grpo"}
    frpo = align.get("frpo", {})
    per_lambda = {format_lambda(float(k)): v for k, v in frpo.get("per_lambda", {}).items()}
    unknown = set(per_lambda) - {format_lambda(x) for x in frpo.get("lambdas", [])}
    if unknown:
        raise ValueError(f"align.frpo.per_lambda has keys not in align.frpo.lambdas: {sorted(unknown)}")
    return {**settings, **frpo.get("settings", {}), **per_lambda.get(format_lambda(lam), {}),
            "method": "frpo", "lam": lam, "jackknife": frpo.get("jackknife", True),
            "baseline": frpo.get("baseline", True)}


def regime_settings(config: dict, regime: str, seed: int) -> tuple[str, str, dict]:
    """(type, dataset name, training settings) of a downstream regime with its seed."""
    regimes = config.get("finetune", {}).get("regimes", {})
    if regime not in regimes:
        raise ValueError(f"unknown regime {regime!r}; known: {sorted(regimes)}")
    settings = dict(regimes[regime])
    kind, dataset = settings.pop("type"), settings.pop("dataset")
    settings["seed"] = seed
    if kind == "rl":
        settings.setdefault("method", "grpo")
    return kind, dataset, settings


def check_references(config: dict) -> None:
    """Every dataset and judge name a config uses must exist; fail before any job starts."""
    from .judges import build_judge

    datasets = config.get("datasets", {})
    uses = [("align.dataset", config["align"]["dataset"])]
    uses += [(f"models.{m}.pretrain_dataset", spec.get("pretrain_dataset", "pretrain"))
             for m, spec in config["models"].items() if spec["source"] == "tiny"]
    uses += [(f"finetune.regimes.{r}.dataset", spec["dataset"])
             for r, spec in config.get("finetune", {}).get("regimes", {}).items()]
    uses += [(f"evaluate.sets.{k}", v) for k, v in config.get("evaluate", {}).get("sets", {}).items()]
    needs = {"local": "path", "hf": "repo_id"}
    for model, spec in config["models"].items():
        key = needs.get(spec["source"])
        if key and not spec.get(key):
            raise ValueError(f"config key models.{model}: source {spec['source']!r} needs {key!r}")
    for key, name in uses:
        if name not in datasets:
            raise ValueError(f"config key {key} names dataset {name!r}, which is not under datasets: {sorted(datasets)}")
    for method in method_keys(config):
        for spec in method_settings(config, method).get("rewards", []):
            build_judge(spec)
    for regime, spec in config.get("finetune", {}).get("regimes", {}).items():
        for judge in spec.get("rewards", []):
            build_judge(judge)
        if spec["type"] == "rl" and not spec.get("rewards"):
            raise ValueError(f"finetune.regimes.{regime}: an rl regime needs rewards (judge names)")
