"""config.yaml and every preset validate against the schema; typos are rejected; references resolve;
presets stand alone and follow the authors' settings (docs/paper-settings.md).

Fails, for example, when a preset misspells a key (`defualts`), gives lr as a string, names a dataset or
judge that does not exist, or drifts from a number the authors used.
"""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from frpo_workflow.data.loaders import SOURCE_KEYS
from frpo_workflow.plan import check_config, lora_keys, method_keys, method_settings, regime_settings

ROOT = Path(__file__).parents[2]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
PRESETS = sorted((ROOT / "workflow" / "presets").glob("*.yaml"))
PAPER_PRESETS = [p for p in PRESETS if not p.stem.startswith("toy-")]
CONFIGS = [ROOT / "config.yaml", *PRESETS]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_three_paper_presets_exist():
    assert {p.stem for p in PRESETS} >= {"safety-qwen2.5-7b", "safety-mistral-7b", "math-qwen2.5-math-7b"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validates_against_schema(path):
    cfg = load(path)
    validate(cfg, SCHEMA)  # set_default=True fills defaults in place
    check_config(cfg)
    assert method_keys(cfg)


@pytest.mark.parametrize("path", PAPER_PRESETS, ids=lambda p: p.name)
def test_preset_is_a_whole_paper_scale_study(path):
    cfg = load(path)
    assert cfg["standalone"] is True
    assert all(m["source"] == "hf" and m["repo_id"] for m in cfg["models"].values())
    assert not any(s["type"] == "toy" for s in cfg["datasets"].values())
    assert cfg["launch"] == {"accelerate_config": "zero2", "num_processes": 0}
    assert cfg["resources"]["train"]["gpu"] == 8
    for judge in [j for m in cfg["evaluate"]["metrics"].values() for j in [m["judge"]]]:
        assert judge in ("refusal", "exact_match", "math_correct") or judge["name"] in (
            "harmbench_refusal", "strongreject_score", "reward_model")


SAFETY = [p for p in PRESETS if p.stem.startswith("safety-")]


@pytest.mark.parametrize("path", SAFETY, ids=lambda p: p.name)
def test_safety_presets_follow_the_authors(path):
    cfg = load(path)
    validate(cfg, SCHEMA)
    d = cfg["align"]["defaults"]
    assert d["lora"] == {"r": 64, "lora_alpha": 64, "lora_dropout": 0.0,
                         "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    assert (d["lr"], d["lr_scheduler"], d["warmup_ratio"], d["steps"], d["weight_decay"], d["max_grad_norm"]) == \
        (1e-5, "cosine", 0.1, 500, 0.1, 1.0)
    assert (d["num_generations"], d["temperature"], d["top_p"], d["max_prompt_length"], d["max_completion_length"]) == \
        (8, 1.0, 0.9, 1024, 2048)
    assert method_settings(cfg, "grpo")["beta"] == 0.1 and method_settings(cfg, "grpo")["scale_rewards"] == "group"
    pairs = {(method_settings(cfg, m)["lam"], method_settings(cfg, m)["beta"]) for m in method_keys(cfg) if m != "grpo"}
    assert pairs == {(5, 2e-4), (2, 5e-4), (1, 1e-3), (0.5, 2e-3), (0.2, 5e-3), (0.1, 0.1)}
    assert [r if isinstance(r, str) else r["name"] for r in d["rewards"]] == ["strongreject_safety", "reward_model"]
    align = cfg["datasets"][cfg["align"]["dataset"]]
    assert align["holdout"] == {"size": 0.025, "stratify": True}
    _, name, alpaca = regime_settings(cfg, "sft-alpaca", 42)
    assert (alpaca["lr"], alpaca["lr_scheduler"], alpaca["warmup_ratio"], alpaca["epochs"], alpaca["batch_size"],
            alpaca["max_length"]) == (1e-6, "constant_with_warmup", 0.05, 1, 4, 2048) and "lora" not in alpaca
    assert cfg["datasets"][name]["prompt_template"] == "### Instruction:\n{instruction}\n\n### Input:\n{input}"
    assert (cfg["datasets"][name]["limit"], cfg["datasets"][name]["shuffle"]) == (40000, False)
    _, name, gsm8k = regime_settings(cfg, "sft-gsm8k", 42)
    assert (gsm8k["lr"], gsm8k["lr_scheduler"], gsm8k["warmup_ratio"], gsm8k["weight_decay"], gsm8k["epochs"]) == \
        (6e-6, "cosine", 0.25, 0.0, 1) and "lora" not in gsm8k
    assert cfg["datasets"][name]["holdout"] == {"size": 50, "stratify": False}
    regimes = cfg["finetune"]["regimes"]
    assert (regimes["sft-alpaca"]["curves"]["every"], regimes["sft-gsm8k"]["curves"]["every"]) == (100, 50)
    assert cfg["finetune"]["curves"]["n_prompts"] == 128 and cfg["finetune"]["seeds"] == [42]


def test_math_preset_follows_the_authors():
    cfg = load(ROOT / "workflow" / "presets" / "math-qwen2.5-math-7b.yaml")
    validate(cfg, SCHEMA)
    d = cfg["align"]["defaults"]
    assert (d["lora"]["r"], d["lora"]["lora_alpha"], d["beta"], d["epochs"], d["weight_decay"]) == (64, 128, 1e-4, 3, 0.0)
    assert (d["max_prompt_length"], d["max_completion_length"], d["temperature"], d["top_p"]) == (512, 2048, 1.0, 1.0)
    assert d["rewards"] == ["math_format", "math_correct"]
    lrs = {method_settings(cfg, m).get("lam"): method_settings(cfg, m)["lr"] for m in method_keys(cfg)}
    assert lrs == {None: 6e-6, 10: 6e-6, 4: 6e-6, 2: 6e-6, 1: 6e-6, 0.5: 5e-6, 0.2: 5e-6, 0.1: 5e-6}
    math = cfg["datasets"]["math"]
    assert math["filters"] == {"level": ["Level 3", "Level 4", "Level 5"]} and math["holdout"]["size"] == 100
    assert math["system_prompt"] == "Please reason step by step, and put your final answer within \\boxed{}."
    _, name, code = regime_settings(cfg, "sft-code", 42)
    assert code["lora"] == {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    assert (code["lr"], code["warmup_ratio"], code["weight_decay"], code["max_grad_norm"], code["max_length"]) == \
        (5e-5, 0.03, 0.04, 0.3, 4096)
    source = cfg["datasets"][name]
    assert source["stream"] == {"buffer_size": 10000, "seed": 42, "take": 50000}
    assert source["filters"] == {"average_test_score": "1"} and source["system_prompt"] == ""


def test_lora_keys_read_from_source_match_peft():
    import dataclasses

    import peft

    assert lora_keys() == {f.name for f in dataclasses.fields(peft.LoraConfig)}


@pytest.mark.parametrize("mutate,key", [
    (lambda c: c["align"].update({"defualts": {}}), "defualts"),
    (lambda c: c["align"]["defaults"].update({"learning_rate": 1e-5}), "learning_rate"),
    (lambda c: c["datasets"]["alpaca"].update({"prompt_colum": "x"}), "prompt_colum"),
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


@pytest.mark.parametrize("path", [ROOT / "config.yaml", *PRESETS],
                         ids=lambda p: p.name)
def test_dataset_keys_accepted_by_loader(path):
    for name, source in load(path)["datasets"].items():
        unknown = set(source) - SOURCE_KEYS[source["type"]]
        assert not unknown, f"{path.name}: datasets.{name} has keys the loader rejects: {sorted(unknown)}"


def test_alignment_seed_reaches_only_its_own_job_settings():
    cfg = load(ROOT / "config.yaml")
    validate(cfg, SCHEMA)
    assert cfg["align"]["seeds"] == [0]
    from frpo_workflow.plan import align_settings

    one, two = align_settings(cfg, "grpo", 0), align_settings(cfg, "grpo", 1)
    assert (one["seed"], two["seed"]) == (0, 1) and {**one, "seed": 1} == two
    cfg["align"]["seeds"] = [0, 0]
    with pytest.raises(WorkflowError):
        validate(cfg, SCHEMA)  # a repeated seed would name one output twice


def test_sampled_metric_must_be_an_evaluation_metric():
    cfg = load(ROOT / "config.yaml")
    validate(cfg, SCHEMA)
    check_config(cfg)
    cfg["evaluate"]["sampled"]["metrics"] = ["harmful_refusal"]
    with pytest.raises(ValueError, match=r"evaluate.sampled.metrics: \['harmful_refusal'\] not among evaluate.metrics"):
        check_config(cfg)


def test_toy_study_preset_tests_the_claim_over_seeds():
    cfg = load(ROOT / "workflow" / "presets" / "toy-study.yaml")
    validate(cfg, SCHEMA)
    check_config(cfg)
    assert cfg["standalone"] is True and cfg["models"]["tiny"]["source"] == "tiny"
    assert "grpo" in method_keys(cfg) and len(cfg["align"]["frpo"]["lambdas"]) >= 4
    assert len(cfg["align"]["seeds"]) >= 3 and len(cfg["finetune"]["seeds"]) >= 2
    assert cfg["evaluate"]["sampled"]["k"] >= 4 and cfg["evaluate"]["sampled"]["metrics"] == ["harmful_refusal_rate"]
    # Only λ differs between methods: no per-method alignment settings.
    settings = [{k: v for k, v in method_settings(cfg, m).items() if k not in ("method", "lam", "jackknife", "baseline")}
                for m in method_keys(cfg)]
    assert all(s == settings[0] for s in settings)


def test_the_paired_toy_study_is_preregistered_and_powered():
    """issue 23: the primary comparison is in the preset (endpoint, arms, test), paired arms differ in their
    method and the control's lr only, 24 alignment seeds per compared arm (benchmarks/power.py)."""
    from frpo_workflow.paired import PairedSpec
    from frpo_workflow.plan import arm_seeds, regime_arms
    from frpo_workflow.stats import paired_t_power

    cfg = load(ROOT / "workflow" / "presets" / "toy-paired-study.yaml")
    validate(cfg, SCHEMA)
    check_config(cfg)
    spec = PairedSpec.from_json(cfg["report"])
    primary = [(c.arm, c.baseline) for c in spec.comparisons if c.role == "primary"]
    assert primary == [("frpo-l0.2", "grpo"), ("frpo-l0.2", "grpo-matched")]
    assert (spec.metric, spec.kl_max, spec.regime, spec.alpha) == ("harmful_refusal_rate_sampled", 5.0,
                                                                   "sft-affirmative", 0.05)
    for arm in ("grpo", "frpo-l0.2", "grpo-matched"):
        assert len(arm_seeds(cfg, arm)) >= 22 and arm in regime_arms(cfg, "sft-affirmative")
    assert paired_t_power(0.06 / 0.085, len(cfg["align"]["seeds"]), 0.025) >= 0.8
    grpo, matched = method_settings(cfg, "grpo"), method_settings(cfg, "grpo-matched")
    assert {k for k in set(grpo) | set(matched) if grpo.get(k) != matched.get(k)} <= {"lr", "steps"}
    frpo = method_settings(cfg, "frpo-l0.2")
    assert {k for k in set(grpo) | set(frpo) if grpo.get(k) != frpo.get(k)} == {"method", "lam", "jackknife", "baseline"}
    assert cfg["finetune"]["seeds"] == [0]


def test_an_overlay_can_shrink_the_sweep_and_per_lambda_entries_outside_it_go_unused():
    cfg = load(ROOT / "workflow" / "presets" / "safety-qwen2.5-7b.yaml")
    cfg["align"]["frpo"]["lambdas"] = [0.5]  # what `align: {frpo: {lambdas: [0.5]}}` over the preset gives
    validate(cfg, SCHEMA)
    check_config(cfg)
    assert method_keys(cfg) == ["grpo", "frpo-l0.5"]
    assert method_settings(cfg, "frpo-l0.5")["beta"] == 2e-3  # its own per-λ entry still applies


@pytest.mark.parametrize("key", ["O.5", "half", ""])
def test_a_per_lambda_key_that_is_no_number_is_a_typo(key):
    cfg = load(ROOT / "config.yaml")
    cfg["align"]["frpo"]["per_lambda"] = {key: {"beta": 0.1}}
    validate(cfg, SCHEMA)
    with pytest.raises(ValueError, match=f"align.frpo.per_lambda: key '{key}' is not a number"):
        check_config(cfg)


def test_two_per_lambda_keys_for_one_lambda_are_refused():
    cfg = load(ROOT / "config.yaml")
    cfg["align"]["frpo"]["per_lambda"] = {"0.5": {"beta": 0.1}, 0.50: {"beta": 0.2}}
    validate(cfg, SCHEMA)
    with pytest.raises(ValueError, match="two keys for λ = 0.5"):
        check_config(cfg)


def test_overlays_replace_entries_that_name_their_type_or_source_and_tweak_the_rest():
    from frpo_workflow.plan import apply_overlays

    preset = load(ROOT / "workflow" / "presets" / "safety-qwen2.5-7b.yaml")
    local = {"models": {"qwen2.5-7b-instruct": {"source": "local", "path": "models/qwen"}}}
    tweak = {"models": {"qwen2.5-7b-instruct": {"pad_token": "<pad>"}},
             "datasets": {"alpaca": {"limit": 100}, "eval_safety": {"type": "csv", "path": "s.csv"}}}
    merged = copy.deepcopy(preset)  # what Snakemake's key-by-key merge of the three gives
    merged["models"]["qwen2.5-7b-instruct"].update({"source": "local", "path": "models/qwen", "pad_token": "<pad>"})
    merged["datasets"]["alpaca"]["limit"] = 100
    merged["datasets"]["eval_safety"].update(tweak["datasets"]["eval_safety"])
    config = apply_overlays(merged, [preset, local, tweak])
    assert config["models"]["qwen2.5-7b-instruct"] == {"source": "local", "path": "models/qwen", "pad_token": "<pad>"}
    assert config["datasets"]["eval_safety"] == {"type": "csv", "path": "s.csv"}  # no jsonl columns or kind left
    assert config["datasets"]["alpaca"] == {**preset["datasets"]["alpaca"], "limit": 100}  # a tweak stays a tweak
    assert apply_overlays(preset, [preset]) == preset
