"""config.yaml and every preset validate against the schema; typos are rejected; references resolve.

Fails, for example, when a preset misspells a key (`defualts`), gives lr as a string, or names a
dataset or judge that does not exist.
"""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from frpo_workflow.data.loaders import SOURCE_KEYS
from frpo_workflow.plan import check_references, method_keys

ROOT = Path(__file__).parents[2]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
PRESETS = sorted((ROOT / "workflow" / "presets").glob("*.yaml"))
CONFIGS = [ROOT / "config.yaml", *PRESETS]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_three_paper_presets_exist():
    assert {p.stem for p in PRESETS} >= {"safety-qwen2.5-7b", "safety-mistral-7b", "math-qwen2.5-math-7b"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validates_against_schema(path):
    cfg = load(path)
    validate(cfg, SCHEMA)  # set_default=True fills defaults in place
    check_references(cfg)
    assert method_keys(cfg)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_is_paper_scale(path):
    cfg = load(path)
    assert all(m["source"] == "hf" and m["repo_id"] for m in cfg["models"].values())
    assert all(s["type"] == "hf" for s in cfg["datasets"].values())
    defaults = cfg["align"]["defaults"]
    assert defaults["lora"]["r"] == defaults["lora"]["lora_alpha"] == 64
    assert (defaults["steps"], defaults["num_generations"], defaults["max_completion_length"]) == (500, 8, 2048)
    assert cfg["launch"] == {"accelerate_config": "zero2", "num_processes": 0}
    assert cfg["resources"]["train"]["gpu"] == 8


@pytest.mark.parametrize("mutate,key", [
    (lambda c: c["align"].update({"defualts": {}}), "defualts"),
    (lambda c: c["align"]["defaults"].update({"learning_rate": 1e-5}), "learning_rate"),
    (lambda c: c["datasets"]["align"].update({"prompt_colum": "x"}), "prompt_colum"),
    (lambda c: c["finetune"]["regimes"]["sft-alpaca"].update({"stpes": 5}), "stpes"),
])
def test_typo_is_rejected_naming_the_key(mutate, key):
    cfg = copy.deepcopy(load(ROOT / "workflow" / "presets" / "safety-qwen2.5-7b.yaml"))
    mutate(cfg)
    with pytest.raises(WorkflowError, match=key):
        validate(cfg, SCHEMA)


def test_wrong_type_is_rejected():
    cfg = load(ROOT / "config.yaml")
    cfg["align"]["defaults"]["lr"] = "1e-5"
    with pytest.raises(WorkflowError):
        validate(cfg, SCHEMA)


# The schema calls the hf dataset config `config`, the loader (SOURCE_KEYS) calls it `subset`; a preset
# using GSM8K's `main` config cannot satisfy both. strict: remove the mark once the two agree.
@pytest.mark.parametrize("path", [ROOT / "config.yaml", *PRESETS],
                         ids=lambda p: p.name)
def test_dataset_keys_accepted_by_loader(path):
    for name, source in load(path)["datasets"].items():
        unknown = set(source) - SOURCE_KEYS[source["type"]]
        assert not unknown, f"{path.name}: datasets.{name} has keys the loader rejects: {sorted(unknown)}"
