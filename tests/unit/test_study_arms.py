"""Extra alignment arms (issue 23 items 4 and 6): a GRPO control with its own settings, another setting's arms
(RL alignment on arithmetic) with their own dataset and seeds, regimes restricted to arms, and the checks that
keep a paired comparison well defined."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from frpo_workflow import plan

ROOT = Path(__file__).parents[2]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def study() -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["align"]["seeds"] = [0, 1, 2]
    cfg["align"]["frpo"]["lambdas"] = [0.2]
    cfg["align"]["arms"] = {
        "grpo-matched": {"method": "grpo", "lr": 0.0002},
        "grpo-raw-matched": {"method": "grpo", "scale_rewards": "none", "lr": 0.0005, "seeds": [0, 1]},
        "math-grpo": {"method": "grpo", "dataset": "rl_arithmetic", "rewards": ["exact_match"], "steps": 40,
                      "seeds": [0, 1]},
        "math-frpo-l0.2": {"method": "frpo", "lam": 0.2, "dataset": "rl_arithmetic", "rewards": ["exact_match"],
                           "steps": 40, "seeds": [0, 1]},
    }
    regimes = cfg["finetune"]["regimes"]
    regimes["sft-affirmative"]["arms"] = ["grpo", "frpo-l0.2", "grpo-matched", "grpo-raw-matched", "math-grpo",
                                          "math-frpo-l0.2"]
    regimes["sft-arithmetic"]["arms"] = ["grpo", "frpo-l0.2", "grpo-matched"]
    del regimes["rl-arithmetic"]
    cfg["report"] = {"kl_levels": [1, 2, 5], "baselines": ["grpo"],
                     "endpoint": {"metric": "harmful_refusal_rate_sampled", "kl_max": 5, "regime": "sft-affirmative"},
                     "comparisons": [{"arm": "frpo-l0.2", "baseline": "grpo", "role": "primary"},
                                     {"arm": "frpo-l0.2", "baseline": "grpo-matched", "role": "primary"},
                                     {"arm": "math-frpo-l0.2", "baseline": "math-grpo", "role": "secondary",
                                      "metric": "task_accuracy"}]}
    validate(cfg, SCHEMA)
    return cfg


def test_extra_arms_join_the_sweep_with_their_own_settings():
    cfg = study()
    assert plan.method_keys(cfg) == ["grpo", "frpo-l0.2", "grpo-matched", "grpo-raw-matched", "math-grpo",
                                     "math-frpo-l0.2"]
    grpo, matched = plan.method_settings(cfg, "grpo"), plan.method_settings(cfg, "grpo-matched")
    # The control is GRPO with its lr raised and nothing else changed.
    assert {k for k in set(grpo) | set(matched) if grpo.get(k) != matched.get(k)} == {"lr"}
    assert matched["method"] == "grpo" and matched["lr"] == 0.0002
    raw = plan.method_settings(cfg, "grpo-raw-matched")
    assert raw["scale_rewards"] == "none" and "lam" not in raw
    math_frpo = plan.method_settings(cfg, "math-frpo-l0.2")
    assert math_frpo["method"] == "frpo" and math_frpo["lam"] == 0.2 and math_frpo["rewards"] == ["exact_match"]
    assert math_frpo["jackknife"] is True and math_frpo["steps"] == 40
    assert plan.arm_lambda(cfg, "math-frpo-l0.2") == 0.2 and plan.arm_lambda(cfg, "grpo-matched") is None
    assert plan.arm_lambda(cfg, "frpo-l0.2") == 0.2
    assert plan.arm_dataset(cfg, "math-grpo") == "rl_arithmetic" and plan.arm_dataset(cfg, "grpo-matched") == "align"
    assert plan.arm_seeds(cfg, "math-grpo") == [0, 1] and plan.arm_seeds(cfg, "grpo") == [0, 1, 2]
    # The preflight's (and the errors') config key of a setting is the arm's own where the arm sets it.
    assert plan.setting_source(cfg, "grpo-matched", "lr") == "align.arms.grpo-matched.lr"
    assert plan.setting_source(cfg, "math-grpo", "rewards") == "align.arms.math-grpo.rewards"
    assert plan.setting_source(cfg, "grpo-matched", "beta") == "align.defaults.beta"
    plan.check_config(cfg)


def test_each_arm_at_its_seeds_and_each_regime_on_its_arms():
    cfg = study()
    aligned, tuned = plan.study_states(cfg)
    assert len(aligned) == 3 + 3 + 3 + 2 + 2 + 2
    assert ("math-grpo", 2) not in aligned and ("grpo-matched", 2) in aligned
    arithmetic = {(m, a) for m, a, r, s in tuned if r == "sft-arithmetic"}
    assert {m for m, _ in arithmetic} == {"grpo", "frpo-l0.2", "grpo-matched"}
    assert len([t for t in tuned if t[2] == "sft-affirmative"]) == 3 + 3 + 3 + 2 + 2 + 2
    assert plan.regime_arms(cfg, "sft-arithmetic") == ["grpo", "frpo-l0.2", "grpo-matched"]
    # The math arms' prompts are a dataset of the study, read with the judges their rewards name.
    assert "rl_arithmetic" in plan.used_datasets(cfg)
    assert plan.dataset_usage(cfg, "rl_arithmetic")["judges"]["exact_match"] == "align (math-grpo) rewards"
    # A regime's arms are not training settings.
    assert "arms" not in plan.regime_settings(cfg, "sft-arithmetic", 0)[2]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["align"]["arms"].update({"frpo-l0.5": {"method": "frpo", "lam": 0.5}}), "would be a sweep arm's key"),
    (lambda c: c["align"]["arms"]["math-frpo-l0.2"].pop("lam"), "needs lam > 0"),
    (lambda c: c["align"]["arms"]["grpo-matched"].update({"lam": 1.0}), "a grpo arm takes no lam"),
    (lambda c: c["finetune"]["regimes"]["sft-arithmetic"]["arms"].append("grpo-typo"), "not among the study's arms"),
    (lambda c: c["report"]["comparisons"].append({"arm": "frpo-l0.2", "baseline": "nobody", "role": "secondary"}),
     "not among the study's arms"),
    (lambda c: c["align"]["arms"]["math-grpo"].update({"seeds": [7]}), "share no alignment seed"),
    (lambda c: c["report"]["comparisons"].append({"arm": "math-grpo", "baseline": "grpo", "role": "secondary",
                                                  "regime": "sft-arithmetic"}), "does not run on"),
])
def test_bad_arms_fail_at_dag_build(edit, message):
    cfg = copy.deepcopy(study())
    edit(cfg)
    with pytest.raises(ValueError, match=message):
        plan.check_config(cfg)


def test_the_schema_refuses_an_arm_without_a_method_or_with_an_unknown_key():
    from snakemake.exceptions import WorkflowError

    for arm in ({"lr": 0.001}, {"method": "grpo", "lrr": 0.001}, {"method": "ppo"}):
        cfg = study()
        cfg["align"]["arms"]["bad"] = arm
        with pytest.raises(WorkflowError):
            validate(cfg, SCHEMA)
